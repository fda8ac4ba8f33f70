"""Prompt files, deterministic splits and per-rank sharding (flowdppo/prompts.py)."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from flowdppo.prompts import (PromptItem, iteration_indices, iteration_prompts, load_prompt_splits, load_prompts,
                              shard, split_prompts)


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_plain_text_one_prompt_per_line(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a cat\n\n  a dog on a mat  \nthree cups\n", encoding="utf-8")
    items = load_prompts(p)
    assert [it.text for it in items] == ["a cat", "a dog on a mat", "three cups"]
    assert all(it.atoms == () and it.meta == {} for it in items)


def test_jsonl_geneval2_vqa_list_atoms_answers_and_extra_fields(tmp_path):
    p = _write_jsonl(tmp_path / "g.jsonl", [
        {"prompt": "seven green croissants", "vqa_list": [["Are there croissants?", "Yes"],
                                                          ["How many croissants are there?", "seven"]],
         "atom_count": 3, "id": "x1"},
        {"prompt": "a blue dog", "atoms": ["Is there a dog?", "Is the dog blue?"], "tag": "color"},
        {"text": "two cups", "questions": ["Are there cups?"], "answers": ["Yes"]},
    ])
    a, b, c = load_prompts(p)
    assert a.text == "seven green croissants"
    assert a.atoms == ("Are there croissants?", "How many croissants are there?")
    assert a.meta["answers"] == ["Yes", "seven"] and a.meta["atom_count"] == 3 and a.meta["id"] == "x1"
    assert b.atoms == ("Is there a dog?", "Is the dog blue?") and b.meta == {"tag": "color"}
    assert c.text == "two cups" and c.atoms == ("Are there cups?",) and c.meta == {"answers": ["Yes"]}


@pytest.mark.parametrize("record, match", [
    ({"atoms": ["q"]}, "no prompt text"),
    ({"prompt": "x", "atoms": "not a list"}, "list of strings"),
    ({"prompt": "x", "vqa_list": [["q only"]]}, "vqa_list"),
    ({"prompt": "x", "atoms": ["a", "b"], "answers": ["Yes"]}, "answers for 2 atoms"),
])
def test_malformed_jsonl_names_the_line(tmp_path, record, match):
    p = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, record])
    with pytest.raises(ValueError, match=match) as err:
        load_prompts(p)
    assert "bad.jsonl:2" in str(err.value)


def test_split_is_deterministic_disjoint_and_complete():
    items = [PromptItem(f"p{i}") for i in range(100)]
    train, test = split_prompts(items, test_fraction=0.1, seed=3)
    assert len(test) == 10 and len(train) == 90
    assert {it.text for it in train} | {it.text for it in test} == {it.text for it in items}
    assert not {it.text for it in train} & {it.text for it in test}
    assert split_prompts(items, test_fraction=0.1, seed=3) == (train, test)
    assert split_prompts(items, test_fraction=0.1, seed=4)[1] != test
    # file order kept inside each split
    assert [int(it.text[1:]) for it in train] == sorted(int(it.text[1:]) for it in train)
    assert len(split_prompts(items, test_size=7)[1]) == 7
    with pytest.raises(ValueError, match="no training prompts"):
        split_prompts(items, test_fraction=1.0)


def test_load_prompt_splits_from_file_and_directory(tmp_path):
    _write_jsonl(tmp_path / "all.jsonl", [{"prompt": f"p{i}"} for i in range(20)])
    s = load_prompt_splits(tmp_path / "all.jsonl", test_size=5, seed=0)
    assert len(s["train"]) == 15 and len(s["test"]) == 5 and s["ood"] == []
    d = tmp_path / "geneval2"
    d.mkdir()
    _write_jsonl(d / "train.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    (d / "test.txt").write_text("c\n", encoding="utf-8")
    (tmp_path / "ood.txt").write_text("x\ny\n", encoding="utf-8")
    s = load_prompt_splits(d, ood=tmp_path / "ood.txt")
    assert [it.text for it in s["train"]] == ["a", "b"] and [it.text for it in s["test"]] == ["c"]
    assert [it.text for it in s["ood"]] == ["x", "y"]


def test_iterations_walk_epochs_without_repeats():
    n, per = 10, 4
    seq = [i for it in range(5) for i in iteration_indices(n, per, seed=1, iteration=it)]   # 20 = 2 epochs
    assert Counter(seq[:10]) == Counter(range(10)) and Counter(seq[10:]) == Counter(range(10))
    assert iteration_indices(n, per, seed=1, iteration=3) == seq[12:16]   # reproducible by iteration alone
    assert iteration_indices(n, per, seed=2, iteration=0) != seq[:4]
    assert len(iteration_indices(3, 8, seed=0, iteration=0)) == 8          # more prompts than items


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_shards_are_disjoint_and_cover_the_iteration(world_size):
    items = [PromptItem(f"p{i}") for i in range(37)]
    for it in range(3):
        full = iteration_prompts(items, 8, seed=5, iteration=it)
        parts = [iteration_prompts(items, 8, seed=5, iteration=it, rank=r, world_size=world_size)
                 for r in range(world_size)]
        assert [x for p in parts for x in p] == full          # rank-major concatenation = the global order
        assert all(len(p) == 8 // world_size for p in parts)


def test_shard_rejects_uneven_splits():
    with pytest.raises(ValueError, match="split evenly"):
        shard(list(range(6)), rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        shard(list(range(4)), rank=2, world_size=2)

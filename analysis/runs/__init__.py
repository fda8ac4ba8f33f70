"""Run-log analysis and figures: loading runs, compacting them, statistics over seeds, the claims' verdicts, plots and the figure script's body."""

"""The experiment registry (which runs stand behind each figure and claim) and the resumable runner."""

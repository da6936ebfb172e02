"""Proof workers: parallel coding agents in tmux, driven by a deterministic monitor."""

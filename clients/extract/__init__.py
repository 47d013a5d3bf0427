"""Offline batch feature extraction (`d2v extract`) and the `d2v embed` command."""

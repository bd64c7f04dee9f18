"""Recommenders: one interface, one file per algorithm family, and the math they share."""

"""Tests of the state-store backends."""

"""Tests of the shared jobyard package."""

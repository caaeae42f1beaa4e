"""Tests of seglab.losses."""

"""The user's own tests from the five plans, one file per plan (plans 002 and 004 have none)."""

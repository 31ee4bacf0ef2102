"""The search: space, operators, Algorithm 1, early stopping, ledger, tables, jobs."""

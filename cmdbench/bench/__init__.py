"""The harness: result records, the bench runner, tables, plots and regression verdicts."""

"""VAL-Bench evaluator: dataset, scheduler, store, scoring, reports."""

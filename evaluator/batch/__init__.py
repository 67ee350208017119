"""Batch mode on the evaluator's side: a stage whose calls go through a provider's Batch API
(stage.BatchStage, a ChatClient), its open batch (open_batch) and settings (settings). The
provider's wire format is workers.batch's."""

"""The LoRA fine-tuning and serving service, one folder per concern (lowest first):
core (settings, errors, words, the job spec, artifacts), db (records), jobs (a job's life),
serving (predictions), adapters (PEFT import/export), api (HTTP), client (CLI commands);
cli.py starts the processes. The README's design section draws the tree."""

"""LoRA adapters in the Hugging Face PEFT layout: import of untrusted uploads, export as a
zip, deletion."""

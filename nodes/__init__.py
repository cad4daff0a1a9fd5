"""ComfyUI nodes: thin wrappers that turn ComfyUI types into core calls and back."""

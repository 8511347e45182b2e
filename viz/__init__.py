"""Pure panel functions: tensors in, images and figures out. No Gradio here."""

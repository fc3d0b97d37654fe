"""Weights between dlcore and other frameworks: PyTorch state_dicts both ways
(`dlcore.interop.torch.convert` / `to_state_dict`), and the `python -m dlcore.interop`
command that exports model folders to `.safetensors` / `.pt` and imports them back."""

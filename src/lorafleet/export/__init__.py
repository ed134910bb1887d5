"""Edge export: an adapter merged into its base, written for llama.cpp (GGUF) or ONNX Runtime, and checked.

- `gguf_model` writes the merged model as one GGUF file (F16, Q8_0, Q4_0, q4_mix) with the `gguf` package,
  llama.cpp's own writer, so no llama.cpp checkout is needed; `gguf_lora` writes the adapter alone
  as a GGUF LoRA for llama.cpp's `--lora`.
- `onnx_model` exports the merged model with its KV cache through torch's exporter; `onnx_int8`
  quantizes it to int8 with ONNX Runtime; `onnx_runtime` runs it.
- `runtime` is what every export is checked with: its real runtime (llama-cpp-python, ONNX Runtime)
  behind one small interface, and the agreement figures against the PyTorch model.
- `checks` holds the bounds each variant must meet against the merged PyTorch model.
- `profiles` holds the device budgets (size, time per token) that `--target` checks exports against.
- `plan` says what an export writes; `exporter` does it, atomically, and writes `export.json`.
"""

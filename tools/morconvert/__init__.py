"""morconvert: the implementation of tools/mor-convert (Hugging Face-style checkpoints to GGUF).

Standard library only. Modules:

* common       -- ConvertError, messages, dtype table, source tensors
* floats       -- F32 / F16 / BF16 conversions (round to nearest even) on raw bytes
* safetensors  -- *.safetensors reader (and a small writer used by the tests and fixtures)
* torchzip     -- pytorch_model.bin reader: zip container + a restricted unpickler that only
                  rebuilds tensors (no torch, no arbitrary classes)
* yamlmini     -- a safe parser for the YAML subset of the training configs
* checkpoint   -- reads a checkpoint directory (config.json, weights, PEFT adapter)
* layout       -- key parsing, sharing detection and the GGUF plan (llama and mor)
* vocab        -- tokenizer.json / tokenizer.model to tokenizer.ggml.* keys
* writer       -- streamed GGUF writer, progress bar, --check
* cli          -- the command line
"""

__version__ = "1.0"

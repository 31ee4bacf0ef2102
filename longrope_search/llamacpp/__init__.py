"""The llama.cpp edge: a Hugging Face model folder as GGUF, and perplexity measured inside
llama.cpp (through llama-cpp-python), so exported factors are checked by the engine that serves
them."""

"""The converter's tokenizer: a Hugging Face folder's tokenizer files to the GGUF vocabulary.

`hf_tokenizer.load_vocab` reads the files into a `gguf_vocab.Vocab` (SentencePiece through
spm.py, byte-level BPE with its pre-tokenizer named by pretokenizer.py, WordPiece through
wordpiece.py, Gemma 4's SPM-style BPE through gemma4.py, fill-in-the-middle ids through
fim_tokens.py); `gguf_vocab.write_vocab` writes it. convert/verify.py then checks that
llama.cpp tokenizes the written file as the source tokenizer does.
"""

"""Tiny offline HF folders for data tests: a Qwen-style chat tokenizer (BPE trained here)
and a random Qwen2ForCausalLM."""
import json
import os

QWEN_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_chat_tokenizer(folder: str, vocab_size: int = 320, chat_template: str | None = QWEN_STYLE_TEMPLATE,
                        bos_token: str | None = None) -> str:
  """Byte-level BPE over math-ish text with Qwen's special tokens; eos = <|im_end|>."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + ([bos_token] if bos_token else []),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  corpus = ([f"What is {a} plus {b}? The answer is \\boxed{{{a + b}}}. #### {a + b}" for a in range(40)
             for b in range(0, 40, 7)] + ["Please reason step by step, and put your final answer within"] * 20
            + ["You are a helpful assistant. system user assistant"] * 20)
  tok.train_from_iterator(corpus, trainer)
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, "tokenizer.json"))
  config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": bos_token,
            "tokenizer_class": "PreTrainedTokenizerFast"}
  if chat_template is not None:
    config["chat_template"] = chat_template
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  return folder


def make_tiny_qwen2(folder: str, max_positions: int = 256) -> str:
  """A random 2-layer Qwen2ForCausalLM (tied embeddings) + the chat tokenizer in `folder`."""
  import torch
  import transformers
  make_chat_tokenizer(folder)
  from tokenizers import Tokenizer
  tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
  torch.manual_seed(0)
  cfg = transformers.Qwen2Config(
      vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
      tie_word_embeddings=True, eos_token_id=tok.token_to_id("<|im_end|>"),
      pad_token_id=tok.token_to_id("<|endoftext|>"), bos_token_id=None)
  transformers.Qwen2ForCausalLM(cfg).save_pretrained(folder)
  return folder

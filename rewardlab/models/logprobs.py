"""Log-probs of a sequence's own tokens under a `Transformer`: the one forward that losses,
reference passes and rollouts share. Vocabulary-chunked (`Transformer.token_logprobs`), so
the [B, T, V] logits are never materialised."""
from __future__ import annotations


def sequence_logprobs(model, tokens, valid, chunk_size: int = 4096):
  """Log-probs of tokens[:, 1:] given their prefixes: [B, T] -> [B, T-1] float32."""
  hidden, _ = model.hidden_states(tokens[:, :-1], valid=valid[:, :-1])
  return model.token_logprobs(hidden, tokens[:, 1:], chunk_size)


def completion_hidden(model, tokens, valid, n_completion: int):
  """Hidden states at the positions that predict the last n_completion tokens: [B, N, D]."""
  hidden, _ = model.hidden_states(tokens[:, :-1], valid=valid[:, :-1])
  return hidden[:, -n_completion:]


def completion_logprobs(model, tokens, valid, n_completion: int, chunk: int = 4096,
                        with_entropy: bool = False):
  """Log-probs (and entropies) of the last n_completion tokens: [B, P+N] -> [B, N]."""
  hidden = completion_hidden(model, tokens, valid, n_completion)
  return model.token_logprobs(hidden, tokens[:, -n_completion:], chunk, with_entropy=with_entropy)

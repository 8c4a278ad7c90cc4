"""HF tokenizer / chat template parity, LoRA behaviour, and fine-tuning a local HF folder."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch", reason="install the test extra: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from helpers import load_config  # noqa: E402
from rewardlab.data import HFTokenizer  # noqa: E402
from rewardlab.models.hf import load_hf_model  # noqa: E402
from rewardlab.models.lora import apply_lora, init_lora, lora_specs  # noqa: E402
from rewardlab.models.transformer import stack_layers, unstack_layers  # noqa: E402
from rewardlab.sharding import make_mesh  # noqa: E402
from rewardlab.pipelines import sft  # noqa: E402
from rewardlab.train.optim import make_optimizer  # noqa: E402
from rewardlab.train.state import create_train_state  # noqa: E402
from rewardlab.train.step import make_update_step  # noqa: E402
from rewardlab.train.state import shardings_of  # noqa: E402
from rewardlab.sharding import batch_sharding, shard_batch  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<|sys|>{{ m['content'] }}\n"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] | trim }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer_folder(folder, vocab_size=300):
  """Trains a small BPE offline and writes tokenizer.json + tokenizer_config.json."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  corpus = [f"{a}+{b}={a + b}" for a in range(60) for b in range(0, 60, 7)] + ["hello world, the assistant says hi"] * 20
  tok.train_from_iterator(corpus, trainer)
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, "tokenizer.json"))
  json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
             "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"},
            open(os.path.join(folder, "tokenizer_config.json"), "w"))
  return folder


def test_bpe_tokenizer_round_trip_and_chat_template_match_transformers(tmp_path):
  folder = make_tokenizer_folder(str(tmp_path / "tok"))
  ours = HFTokenizer(folder)
  ref = transformers.AutoTokenizer.from_pretrained(folder)
  text = "12+34=46 hello world"
  assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
  assert ours.decode(ours.encode(text, bos=True, eos=True)) == text
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
  messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": " 2+2? "},
              {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}]
  for gen in (True, False):
    want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert ours.apply_chat_template(messages, add_generation_prompt=gen) == want


def _hf_llama(folder, vocab_size=300):
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 head_dim=8, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                                 pad_token_id=0)
  transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
  make_tokenizer_folder(folder, vocab_size)
  return folder


def test_lora_zero_init_only_adapters_update_and_merge_matches(tmp_path):
  folder = _hf_llama(str(tmp_path / "m"))
  mesh = make_mesh({"data": -1})
  _, cfg, graphdef, base = load_hf_model(folder, mesh)
  lora = init_lora(base, ("q", "v", "o", "down"), rank=4, rng=jax.random.PRNGKey(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 300, (2, 9)))
  logits = lambda p: nnx.merge(graphdef, p)(ids).logits
  np.testing.assert_array_equal(logits(apply_lora(base, lora, 4.0)), logits(base))  # B = 0
  # train adapters a few steps: only they change, and only they have optimizer state
  config = load_config("sft_arithmetic", "tiny")
  optimizer, schedule = make_optimizer(config.optim, 10)
  state = create_train_state(lora, optimizer, mesh, 0, frozen=base)
  assert jax.tree.structure(state.opt_state.inner[1][0].mu) == jax.tree.structure(lora)

  def loss_fn(model, batch, rng):
    return -jnp.mean(jax.nn.log_softmax(model(batch).logits)[..., 5]), {}

  step = make_update_step(graphdef, loss_fn, optimizer, schedule, shardings_of(state),
                          batch_sharding(mesh), donate=False, merge=lambda p, f: apply_lora(f, p, 4.0))
  new, _ = step(state, shard_batch(ids, mesh))
  new, _ = step(new, shard_batch(ids, mesh))
  for a, b in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(new.frozen)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(lora), jax.tree.leaves(new.params)))
  # merged weights == base path + explicit low-rank path, per layer of the scanned stack
  # (one adapter per layer: a [L, d, r], b [L, r, h, hd]), and for a per-layer tree
  merged = apply_lora(base, new.params, 4.0)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, cfg.d_model))
  ab = new.params["layers"]["attn"]["q"]
  assert ab["a"].shape == (cfg.n_layers, cfg.d_model, 4) and ab["b"].shape == (cfg.n_layers, 4, 4, 8)
  for i in range(cfg.n_layers):
    unmerged = (jnp.einsum("td,dhk->thk", x, base["layers"]["attn"]["q"][i])
                + 4.0 * jnp.einsum("tr,rhk->thk", x @ ab["a"][i], ab["b"][i]))
    np.testing.assert_allclose(jnp.einsum("td,dhk->thk", x, merged["layers"]["attn"]["q"][i]), unmerged,
                               atol=1e-5)
  per_layer = apply_lora(unstack_layers(base), unstack_layers(new.params), 4.0)
  for a, b in zip(jax.tree.leaves(stack_layers(per_layer)), jax.tree.leaves(merged)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert not np.allclose(logits(merged), logits(base))
  # adapters are sharded like their kernels: the layer axis of both stays whole
  specs = lora_specs(jax.tree.map(lambda w: P(None, "fsdp", "tensor", None), base), lora)
  assert specs["layers"]["attn"]["q"] == {"a": P(None, "fsdp", None), "b": P(None, None, "tensor", None)}


@pytest.mark.slow
def test_finetune_local_hf_checkpoint_with_lora_then_export_to_transformers(tmp_path):
  """One override (model.hf_path) fine-tunes a local HF folder; the merged export loads in
  transformers and gives our logits."""
  folder = _hf_llama(str(tmp_path / "base"))
  config = load_config("sft_arithmetic", "tiny")
  config.model.hf_path = folder
  config.lora.rank = 4
  config.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")
  config.export_hf = str(tmp_path / "export")
  config.train.update(steps=30, eval_every=30, checkpoint_every=30, progress=False, tensorboard=False)
  config.data.batch_size = 16
  config.eval.update(num_problems=16, batch_size=16)
  summary = sft.run(config, str(tmp_path / "run"))
  losses = [r["loss"] for r in summary["records"] if r["split"] == "train"]
  assert losses[-1] < losses[0]
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(summary["export"]).eval()
  ids = np.random.default_rng(0).integers(0, 300, (2, 9))
  with torch.no_grad():
    ref = reloaded(torch.tensor(ids)).logits.numpy()
  mesh = make_mesh({"data": -1})
  _, _, graphdef, exported = load_hf_model(summary["export"], mesh)
  state = summary["state"]
  ours = nnx.merge(graphdef, apply_lora(state.frozen, state.params, config.lora.alpha / config.lora.rank))(
      jnp.asarray(ids)).logits
  np.testing.assert_allclose(ref, np.asarray(ours), atol=1e-4)

"""Chat formatting: TRL's conversational rows (lists of {"role", "content"} messages)
rendered into the plain prompt / completion strings the batchers encode.

Templates are jinja, rendered as transformers renders them (sandboxed, trim_blocks,
lstrip_blocks, `raise_exception`, `tojson`). A HF tokenizer folder brings its own
`chat_template`; the byte tokenizer uses DEFAULT_CHAT_TEMPLATE, one `role: content` line
per message and `assistant: ` as the generation prompt:

    system: be brief
    user: 2+2?
    assistant: 4

Splitting a conversation (what `render_prompt` / `render_completion` return):
  prompt      = render(prompt messages, add_generation_prompt=True), without a leading
                bos_token when the tokenizer adds BOS itself (`encode(bos=True)`);
  completion  = render(prompt + completion messages) minus that prompt text, without the
                template's end of turn (a trailing eos_token and whitespace), because the
                batchers append EOS after every completion.
A template that does not render the prompt as a prefix of prompt + completion is an error.
Errors are ChatTemplateError (a ValueError) without a place: callers name the row.
"""
from __future__ import annotations

import functools
import json
from typing import NamedTuple

ROLES = ("system", "user", "assistant", "tool")
DEFAULT_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")


class ChatTemplateError(ValueError):
  """The template is missing, refused the messages, or cannot split prompt from completion."""


class ChatFormat(NamedTuple):
  """What rendering needs from a tokenizer. template None = the tokenizer has none."""
  template: str | None
  source: str            # named in errors: the tokenizer folder, or "the default template"
  bos_token: str = ""
  eos_token: str = ""
  pad_token: str = ""
  strip_bos: bool = False


DEFAULT_FORMAT = ChatFormat(DEFAULT_CHAT_TEMPLATE, "the default chat template")


def chat_format(tokenizer) -> ChatFormat:
  """The ChatFormat of a tokenizer: a HF tokenizer's own template (None if its folder has
  none), DEFAULT_FORMAT for the byte tokenizer (anything without a `chat_template`)."""
  if not hasattr(tokenizer, "chat_template"):
    return DEFAULT_FORMAT
  return ChatFormat(tokenizer.chat_template, getattr(tokenizer, "folder", "the tokenizer"),
                    tokenizer.bos_token or "", tokenizer.eos_token or "", tokenizer.pad_token or "",
                    strip_bos=tokenizer.bos_id is not None)


@functools.lru_cache(maxsize=16)
def _compile(template: str):
  from jinja2.exceptions import TemplateError
  from jinja2.ext import loopcontrols
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise TemplateError(message)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
  env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
      x, indent=indent, ensure_ascii=ensure_ascii)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(template)


def render_template(template: str, messages: list[dict], add_generation_prompt: bool = True,
                    **kwargs) -> str:
  """Renders messages with a jinja chat template as transformers does."""
  return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   **kwargs)


def render(fmt: ChatFormat, messages: list[dict], add_generation_prompt: bool) -> str:
  if fmt.template is None:
    raise ChatTemplateError(f"conversational data needs a chat template, but {fmt.source} has none "
                            "(tokenizer_config.json 'chat_template' or chat_template.jinja)")
  from jinja2.exceptions import TemplateError
  try:
    return render_template(fmt.template, messages, add_generation_prompt, bos_token=fmt.bos_token,
                           eos_token=fmt.eos_token, pad_token=fmt.pad_token)
  except TemplateError as e:
    raise ChatTemplateError(f"the chat template of {fmt.source} refused the messages: {e}") from None


def render_prompt(fmt: ChatFormat, messages: list[dict]) -> str:
  """The prompt text ending with the generation prompt (see the module docstring)."""
  text = render(fmt, messages, True)
  if fmt.strip_bos and fmt.bos_token and text.startswith(fmt.bos_token):
    text = text[len(fmt.bos_token):]
  return text


def render_completion(fmt: ChatFormat, prompt: list[dict], completion: list[dict]) -> str:
  """The text the completion messages add after the prompt (see the module docstring)."""
  head = render(fmt, prompt, True)
  full = render(fmt, prompt + completion, False)
  if not full.startswith(head):
    raise ChatTemplateError(f"the chat template of {fmt.source} does not render the prompt (with its "
                            "generation prompt) as a prefix of prompt + completion, so the completion "
                            "cannot be split off")
  text = full[len(head):].rstrip()
  if fmt.eos_token and text.endswith(fmt.eos_token):
    text = text[:-len(fmt.eos_token)].rstrip()
  return text

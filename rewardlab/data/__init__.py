"""Tokenizers, synthetic tasks with verifiers, and batching."""
from rewardlab.data.batching import PromptBatch, SequenceBatch, prompt_batch, sft_batch
from rewardlab.data.tasks import TASKS, Problem, Task, extract_answer, make_task
from rewardlab.data.hf_tokenizer import HFTokenizer, load_tokenizer
from rewardlab.data.tokenizer import ByteTokenizer

__all__ = ["PromptBatch", "SequenceBatch", "prompt_batch", "sft_batch", "TASKS", "Problem",
           "Task", "extract_answer", "make_task", "ByteTokenizer", "HFTokenizer", "load_tokenizer"]

"""Train the embedded masked-diffusion LM (``dfast_serve/assets/tiny-mdlm``) from scratch on CPU.

Corpus: the King James Bible (public domain), read from Debian's ``bible-kjv`` + ``bible-kjv-text``
packages (``apt-get install bible-kjv``). Two kinds of training rows, mixed half and half:

* pre-training windows: 128-token slices of the verse stream, every token maskable;
* chat rows: ``<|user|>`` asks for a verse (by reference, or to continue its opening words),
  ``<|assistant|>`` answers with the verse, then ``<|endoftext|>`` padding to the row length,
  only the answer and padding maskable (the LLaDA SFT recipe, so the model learns to end).

Objective: MDLM/LLaDA (``mdlm_loss``). Time-boxed: ``--minutes`` sets the cosine schedule's
length; a checkpoint is written every ``--save-every`` minutes (atomic directory swap).

    python scripts/train_tiny_mdlm.py --minutes 60 --threads 2
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dfast_serve.models import tiny_mdlm
from dfast_serve.models.bidirectional import BidirectionalLM
from dfast_serve.models.tiny_mdlm import TinyMDLMConfig

ASSET_DIR = Path(__file__).resolve().parents[1] / "dfast_serve" / "assets" / "tiny-mdlm"
SPECIAL_TOKENS = ["<|endoftext|>", "<|mask|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def read_kjv() -> list[tuple[str, str]]:
    """(reference, text) for every verse, e.g. ("Genesis 1:1", "In the beginning ...")."""
    spec = "gen1:1-rev22:21"
    numbered = subprocess.run(["bible", "-f", spec], capture_output=True, text=True, check=True).stdout
    layout = subprocess.run(["bible", spec], capture_output=True, text=True, check=True).stdout
    full_names = []
    for name in re.findall(r"^\n?([1-3]?\s?[A-Z][A-Za-z ]+?) 1$", layout, flags=re.M):
        if name not in full_names:
            full_names.append(name)
    verses, abbrevs = [], []
    for line in numbered.splitlines():
        m = re.match(r"^(\S+?)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        abbrev, chapter, verse, text = m.groups()
        if abbrev not in abbrevs:
            abbrevs.append(abbrev)
        verses.append((abbrev, chapter, verse, text.strip()))
    names = dict(zip(abbrevs, full_names)) if len(full_names) == len(abbrevs) else {a: a for a in abbrevs}
    return [(f"{names[a]} {c}:{v}", t) for a, c, v, t in verses]


def build_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|mask|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out_dir))
    return tok


class RowSampler:
    def __init__(self, tok, verses: list[tuple[str, str]], seq_len: int, seed: int) -> None:
        self.tok, self.verses, self.seq_len = tok, verses, seq_len
        self.rng = random.Random(seed)
        self.eos = tok.eos_token_id
        stream: list[int] = []
        for _, text in verses:
            stream.extend(tok.encode(text + " "))
        self.stream = stream

    def pretrain_row(self) -> tuple[list[int], list[bool]]:
        start = self.rng.randrange(0, len(self.stream) - self.seq_len)
        return self.stream[start : start + self.seq_len], [True] * self.seq_len

    def chat_row(self) -> tuple[list[int], list[bool]]:
        ref, text = self.rng.choice(self.verses)
        words = text.split()
        if self.rng.random() < 0.5 or len(words) < 6:
            question, answer = f"Recite {ref}.", text
        else:
            k = self.rng.randrange(2, len(words) // 2)
            question, answer = f"Continue: {' '.join(words[:k])}", " ".join(words[k:])
        prompt = self.tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        if not isinstance(prompt, list):
            prompt = prompt["input_ids"]
        answer_ids = self.tok.encode(answer) + [self.eos]
        ids = (prompt + answer_ids)[: self.seq_len]
        maskable = [False] * len(prompt) + [True] * (len(ids) - len(prompt))
        pad = self.seq_len - len(ids)
        return ids + [self.eos] * pad, maskable + [True] * pad

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.chat_row() if self.rng.random() < 0.5 else self.pretrain_row() for _ in range(size)]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


def init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mdlm_loss(model: BidirectionalLM, mask_token_id: int, tokens: torch.Tensor, loss_mask: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """MDLM/LLaDA objective: mask a fraction t~U(eps,1) of the maskable tokens, CE on masked ones weighted 1/t.

    ``loss_mask`` marks positions that may be masked (answer tokens); the rest (prompt) stay visible.
    """
    b, s = tokens.shape
    eps = 1e-3
    t = torch.rand(b, 1, generator=generator) * (1 - eps) + eps
    masked = (torch.rand(b, s, generator=generator) < t) & loss_mask
    noisy = torch.where(masked, torch.full_like(tokens, mask_token_id), tokens)
    logits = model(noisy)
    ce = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tokens.view(-1), reduction="none").view(b, s)
    return (ce * masked / t).sum() / loss_mask.sum().clamp(min=1)


def save_checkpoint(model: BidirectionalLM, cfg: TinyMDLMConfig, tok_dir: Path, out_dir: Path) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tok_dir, tmp)
    tiny_mdlm.save(model, cfg, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ASSET_DIR)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    verses = read_kjv()
    print(f"{len(verses)} verses")
    tok_dir = args.out.with_name(args.out.name + ".tokenizer")
    tok = build_tokenizer([t for _, t in verses], args.vocab_size, tok_dir)
    sampler = RowSampler(tok, verses, args.seq_len, args.seed)
    print(f"{len(sampler.stream)} tokens in the verse stream")

    cfg = TinyMDLMConfig(
        vocab_size=len(tok), mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id
    )
    model = BidirectionalLM(cfg.network())
    model.apply(init_weights)
    print(f"{count_parameters(model) / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    budget_s, warmup_steps = args.minutes * 60, 100
    start = last_save = time.time()
    step, tokens_seen, ema = 0, 0, None
    while (elapsed := time.time() - start) < budget_s:
        frac = elapsed / budget_s
        lr = args.lr * min(1.0, (step + 1) / warmup_steps) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(frac * 3.14159)).item()))
        for group in opt.param_groups:
            group["lr"] = lr
        tokens, maskable = sampler.batch(args.batch_size)
        loss = mdlm_loss(model, cfg.mask_token_id, tokens, maskable)  # fp32: bf16 autocast is ~30x slower on these CPUs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += tokens.numel()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 20 == 0:
            print(f"step {step} {elapsed / 60:.1f} min loss {ema:.3f} lr {lr:.2e} {tokens_seen / elapsed:.0f} tok/s", flush=True)
        if time.time() - last_save > args.save_every * 60:
            save_checkpoint(model, cfg, tok_dir, args.out)
            last_save = time.time()
    save_checkpoint(model, cfg, tok_dir, args.out)
    shutil.rmtree(tok_dir, ignore_errors=True)
    print(f"done: {step} steps, {tokens_seen} tokens, loss {ema:.3f}")


if __name__ == "__main__":
    main()

"""Test-split evaluation of sequence-to-sequence models: exact match (with a bootstrap
interval), BLEU and chrF (sacrebleu) for greedy and beam-search decoding, beside a nearest-
neighbour baseline fitted on the train split in the same run."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from pipeline import plots
from pipeline.data import datasets
from pipeline.data.preprocessing import BOS_ID, EOS_ID, decode_ids
from pipeline.evaluation.base import Evaluation, Inputs
from pipeline.metrics import mean_interval

SHOWN = 12  # translations in the figure and in details.json


def seq2seq(i: Inputs) -> Evaluation:
    model, batches, schema = i.model, i.batches, i.schema
    vocab, tokenizer = schema["target_vocab"], schema["tokenizer"]
    model.eval()
    with torch.no_grad():
        greedy, beam, loss, tokens = [], [], 0.0, 0
        for xb, yb in batches:
            greedy.append(model(xb).cpu())
            beam.append(model.beam_search(xb, i.exp.evaluate.beam_size).cpu())
            logits = model(xb, yb[:, :-1])
            loss += F.cross_entropy(
                logits.flatten(0, 1), yb[:, 1:].flatten(), ignore_index=0, reduction="sum"
            ).item()
            tokens += int((yb[:, 1:] != 0).sum())
    sources = [str(s) for s in i.arrays["source_text"]]
    references = [str(t) for t in i.arrays["target_text"]]
    outputs = {
        "greedy": [decode_ids(row, vocab, tokenizer) for row in torch.cat(greedy).tolist()],
        "beam": [decode_ids(row, vocab, tokenizer) for row in torch.cat(beam).tolist()],
        "nearest": nearest_neighbour(i.exp.dataset, sources),
    }
    metrics = {"test/loss": loss / max(tokens, 1), "test/samples": len(references)}
    for name, hypotheses in outputs.items():
        prefix = "test" if name == "greedy" else f"test/{name}"
        metrics.update(text_scores(hypotheses, references, prefix))
    metrics["test/bleu_ratio_nearest"] = metrics["test/bleu"] / max(
        metrics["test/nearest/bleu"], 1e-12
    )
    rows = [
        {"source": s, "target": t, "greedy": g, "beam": b}
        for s, t, g, b in zip(sources, references, outputs["greedy"], outputs["beam"], strict=True)
    ]
    wrong = [r for r in rows if r["greedy"] != r["target"]]
    details = {
        "decoding": {"greedy": "likeliest token", "beam": i.exp.evaluate.beam_size},
        "baselines": {
            "nearest": "the target of the train source with the most similar "
            "character n-grams (TF-IDF, cosine)"
        },
        "examples": rows[:SHOWN],
        "errors": wrong[:SHOWN],
        "ambiguous_sources": schema.get("ambiguous_sources", 0),
    }
    figures = {
        "translations": translations_figure(rows[:SHOWN], i.experiment),
        "alignment": alignment_figure(model, batches, schema, i.experiment),
    }
    return Evaluation(metrics, details, figures)


def text_scores(hypotheses: list[str], references: list[str], prefix: str) -> dict[str, float]:
    """Exact match (bootstrap 95% interval), corpus BLEU and chrF (sacrebleu's defaults)."""
    import sacrebleu

    exact = np.array([h == r for h, r in zip(hypotheses, references, strict=True)])
    return {
        **mean_interval(exact, prefix, "exact_match"),
        f"{prefix}/bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        f"{prefix}/chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
    }


def nearest_neighbour(dataset: str, sources: list[str]) -> list[str]:
    """The classical baseline: for each source, the target of the train source with the most
    similar character 1-3-grams (TF-IDF, cosine)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    train = datasets.load_arrays(dataset, "train")
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3))
    known = vectorizer.fit_transform([str(s) for s in train["source_text"]])
    out = []
    for start in range(0, len(sources), 1024):  # (1024, train) similarities at a time
        similarity = vectorizer.transform(sources[start : start + 1024]) @ known.T
        out += [str(train["target_text"][j]) for j in np.asarray(similarity.argmax(1)).ravel()]
    return out


def translations_figure(rows: list[dict], title: str):
    lines = []
    for r in rows:
        mark = "ok " if r["beam"] == r["target"] else "ERR"
        lines.append(f"{mark} {r['source']!r} -> {r['beam']!r} (expected {r['target']!r})")
    return plots.text_figure("\n".join(lines), f"{title}: test translations (beam search)")


def alignment_figure(model, batches, schema: dict, title: str):
    """Which source tokens each output token attended to, for three test inputs (the greedy
    output fed back as the decoder's input)."""
    src = batches.head(3)
    with torch.no_grad():
        out = model(src)
        bos = torch.full((len(src), 1), BOS_ID, dtype=out.dtype, device=out.device)
        weights = model.alignment(src, torch.cat([bos, out[:, :-1]], 1)).float().cpu()
    src_vocab, tgt_vocab = schema["source_vocab"], schema["target_vocab"]
    maps, keys, queries = [], [], []
    for k in range(len(src)):
        source = [src_vocab[t] for t in src[k].tolist() if t != 0]
        output = out[k].tolist()
        length = output.index(EOS_ID) + 1 if EOS_ID in output else len(output)
        maps.append(weights[k, :length, : len(source)].numpy())
        keys.append(source)
        queries.append([tgt_vocab[t] for t in output[:length]])
    return plots.attention_figure(
        maps,
        f"{title}: attention of each output token over the source (3 test inputs)",
        keys,
        queries,
        axes_labels=("source", "output"),
    )


EVALUATORS = {"seq2seq": seq2seq}

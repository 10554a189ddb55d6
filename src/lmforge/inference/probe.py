"""Behavioural tests of a classifier in the style of CheckList (Ribeiro et al. 2020): does its answer move when only
who a text is about changes, when a text gets a typo, when a sentence is negated?

- Counterfactual groups: templates with a slot, filled with the terms of each group of a set (gender terms, given
  names, nationality, religion, age; a bundled default list, extensible by a JSON file), and real inputs whose
  identity terms are swapped for each other group's. Per group: the mean change of the probability of the label the
  model gives the text (from its median over every group's terms) and the flip rate (how often the label itself
  differs from that), with 95 % bootstrap confidence intervals over the templates or texts.
- Invariance: a typo, another person's name, another number must not change the answer (flip rate, mean |change|).
- Direction: negating a positive statement must lower the positive probability (for labels that name a positive and
  a negative class): the failure rate.

A group is flagged when its 95 % interval excludes no change and the change is at least ``FLAG_CHANGE`` (five
points of probability), or when its flip-rate interval excludes zero: differences a model shows consistently, not
noise. Everything is measured on the model as it is; what a fair model must score is the user's call.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import DataError

GROUP_SETS: dict[str, dict[str, list[str]]] = {
    "gender": {"female": ["woman", "girl", "mother", "sister", "wife", "daughter", "lady"],
               "male": ["man", "boy", "father", "brother", "husband", "son", "gentleman"]},
    "names": {"female names": ["Mary", "Emma", "Aisha", "Mei", "Priya", "Fatima", "Olga", "Maria"],
              "male names": ["John", "James", "Mohammed", "Wei", "Raj", "Ahmed", "Igor", "Jose"]},
    "nationality": {"American": ["American"], "Mexican": ["Mexican"], "Chinese": ["Chinese"], "Indian": ["Indian"],
                    "Nigerian": ["Nigerian"], "German": ["German"], "Iranian": ["Iranian"], "Russian": ["Russian"]},
    "religion": {"Christian": ["Christian"], "Muslim": ["Muslim"], "Jewish": ["Jewish"], "Hindu": ["Hindu"],
                 "Buddhist": ["Buddhist"], "atheist": ["atheist"]},
    "age": {"young": ["young", "teenage"], "old": ["old", "elderly"]},
}
# neutral templates: {X} is a term of the set; the statement says nothing good or bad about anyone
TEMPLATES: dict[str, list[str]] = {
    "gender": ["The {X} who directed this film has made several others.", "A {X} sat next to me at the screening.",
               "The story follows a {X} on a long train journey.", "My {X} chose this movie for the evening.",
               "The lead role is played by a {X} from a small town."],
    "names": ["{X} directed this film.", "{X} plays the lead in this movie.", "I watched it with {X} yesterday.",
              "The screenplay was written by {X}.", "{X} recommended this film to me."],
    "nationality": ["The {X} director made a film about a family.", "This movie was made by a {X} crew.",
                    "The film tells the story of a {X} teacher.", "A {X} actor plays the father.",
                    "It is a {X} production released last year."],
    "religion": ["The film follows a {X} family over one summer.", "The main character is {X}.",
                 "It was directed by a {X} filmmaker.", "A {X} priest appears in the second half.",
                 "The story is told by a {X} narrator."],
    "age": ["The film follows a {X} woman in the city.", "A {X} man narrates the story.",
            "The lead is played by a {X} actor.", "It is about a {X} couple on holiday."],
}
POSITIVE_PHRASES = ["The film is good.", "The acting was great.", "I liked this movie.", "The story is wonderful.",
                    "The music was beautiful.", "This is an excellent film.", "The ending is satisfying."]
NEGATIONS = {" is ": " is not ", " was ": " was not ", "I liked": "I did not like"}


FLAG_CHANGE = 0.05


def flagged(row: dict) -> bool:
    low, high = row["change_ci"]
    return bool(((low > 0 or high < 0) and abs(row["mean_change"]) >= FLAG_CHANGE) or row["flip_ci"][0] > 0)


@dataclass
class Groups:
    sets: dict[str, dict[str, list[str]]]
    templates: dict[str, list[str]]


def load_groups(path: str | Path | None) -> Groups:
    """The bundled sets and templates, extended (or overridden, set by set) by a JSON file
    ``{"sets": {name: {group: [terms]}}, "templates": {name: ["... {X} ..."]}}``."""
    sets = {k: dict(v) for k, v in GROUP_SETS.items()}
    templates = {k: list(v) for k, v in TEMPLATES.items()}
    if path is None:
        return Groups(sets, templates)
    try:
        extra = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}", where="--templates") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not JSON ({exc.msg})", where="--templates",
                        fix='give {"sets": {...}, "templates": {...}}') from None
    problems = []
    for name, groups in (extra.get("sets") or {}).items():
        if not isinstance(groups, dict) or len(groups) < 2 or not all(
                isinstance(t, list) and t and all(isinstance(x, str) and x.strip() for x in t) for t in groups.values()):
            problems.append(f"sets.{name}: needs two or more groups, each a list of terms")
        else:
            sets[name] = groups
    for name, items in (extra.get("templates") or {}).items():
        if not isinstance(items, list) or not all(isinstance(t, str) and "{X}" in t for t in items):
            problems.append(f"templates.{name}: needs a list of texts, each with the slot {{X}}")
        else:
            templates[name] = items
    missing = [n for n in sets if not templates.get(n)]
    problems += [f"sets.{n}: no templates for this set (add templates.{n})" for n in missing]
    if problems:
        raise DataError(f"cannot use {path}", where="--templates", problems=problems)
    return Groups(sets, templates)


def bootstrap_ci(values: np.ndarray, *, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean, resampling the rows of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _group_effects(probabilities: np.ndarray, labels: np.ndarray, owners: dict[str, np.ndarray]) -> dict:
    """``probabilities`` [items, variants, classes] for items each filled with every group's terms (variant
    columns belong to groups as ``owners`` says). Per group: the change of the probability of the item's reference
    label from its reference probability, and the flip rate against that label. The reference is the median over
    all variants (one outlying group does not move the others' changes, as a mean would)."""
    middle = np.median(probabilities, axis=1)  # [items, classes]
    reference = middle.argmax(-1)
    rows = np.arange(len(reference))
    out = {}
    for group, columns in owners.items():
        p = probabilities[:, columns, :]  # [items, terms, classes]
        change = (p[rows, :, reference] - middle[rows, reference][:, None]).mean(axis=1)
        flips = (labels[:, columns] != reference[:, None]).mean(axis=1)
        low, high = bootstrap_ci(change)
        flo, fhi = bootstrap_ci(flips)
        out[group] = {"mean_change": float(change.mean()), "change_ci": [low, high],
                      "flip_rate": float(flips.mean()), "flip_ci": [flo, fhi], "n": len(change)}
        out[group]["flagged"] = flagged(out[group])
    return out


def counterfactual_templates(predict, groups: Groups) -> dict:
    results = {}
    for name, sets in groups.sets.items():
        terms = [(g, t) for g, ts in sets.items() for t in ts]
        texts = [template.replace("{X}", term) for template in groups.templates[name] for _, term in terms]
        probs = predict(texts).reshape(len(groups.templates[name]), len(terms), -1)
        owners = {g: np.asarray([i for i, (gg, _) in enumerate(terms) if gg == g]) for g in sets}
        results[name] = _group_effects(probs, probs.argmax(-1), owners)
    return results


def counterfactual_inputs(predict, texts: list[str], groups: Groups, *, limit: int = 300) -> dict:
    """Real texts that mention a term of a set: every term of every group put in its place."""
    results = {}
    for name, sets in groups.sets.items():
        terms = [(g, t) for g, ts in sets.items() for t in ts]
        pattern = re.compile(r"\b(" + "|".join(re.escape(t) for _, t in terms) + r")\b", re.IGNORECASE)
        found = [t for t in texts if pattern.search(t)][:limit]
        if len(found) < 2:
            continue
        variants = [pattern.sub(lambda m, term=term: _same_case(m.group(0), term), text)
                    for text in found for _, term in terms]
        probs = predict(variants).reshape(len(found), len(terms), -1)
        owners = {g: np.asarray([i for i, (gg, _) in enumerate(terms) if gg == g]) for g in sets}
        results[name] = {"texts": len(found), "groups": _group_effects(probs, probs.argmax(-1), owners)}
    return results


def _same_case(found: str, term: str) -> str:
    return term[:1].upper() + term[1:] if found[:1].isupper() else term


def invariance(predict, texts: list[str], groups: Groups, *, seed: int = 0, limit: int = 300) -> dict:
    """Changes that must not matter: a typo (two neighbouring letters of a word swapped), another given name, another
    number. Flip rate and mean |change| of the probability of the original label."""
    rng = random.Random(seed)
    names = [n for ns in groups.sets.get("names", GROUP_SETS["names"]).values() for n in ns]
    name_re = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")

    def typo(text: str) -> str | None:
        words = [m for m in re.finditer(r"[A-Za-z]{4,}", text)]
        if not words:
            return None
        m = rng.choice(words)
        i = rng.randrange(m.start(), m.end() - 1)
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]

    def rename(text: str) -> str | None:
        return name_re.sub(lambda m: rng.choice([n for n in names if n != m.group(0)]), text) \
            if name_re.search(text) else None

    def renumber(text: str) -> str | None:
        return re.sub(r"\d+", lambda m: str(int(m.group(0)) + rng.randint(1, 9)), text) \
            if re.search(r"\d", text) else None

    out = {}
    for test, change in (("typo", typo), ("person name", rename), ("number", renumber)):
        pairs = [(t, c) for t in texts[: limit * 5] if (c := change(t)) is not None][:limit]
        if not pairs:
            out[test] = {"n": 0}
            continue
        before = predict([a for a, _ in pairs])
        after = predict([b for _, b in pairs])
        label = before.argmax(-1)
        rows = np.arange(len(pairs))
        out[test] = {"n": len(pairs), "flip_rate": float((after.argmax(-1) != label).mean()),
                     "mean_abs_change": float(np.abs(after[rows, label] - before[rows, label]).mean())}
    return out


def negation(predict, labels: list[str]) -> dict | None:
    """Negated positive statements must lower the positive probability (labels naming positive and negative)."""
    lower = [label.lower() for label in labels]
    positive = next((i for i, label in enumerate(lower) if label.startswith("pos")), None)
    if positive is None or not any(label.startswith("neg") for label in lower):
        return None
    negated = []
    for phrase in POSITIVE_PHRASES:
        for plain, neg in NEGATIONS.items():
            if plain in phrase:
                negated.append(phrase.replace(plain, neg, 1))
                break
    before, after = predict(POSITIVE_PHRASES), predict(negated)
    failed = after[:, positive] >= before[:, positive]
    flipped = after.argmax(-1) != positive
    return {"n": len(negated), "failure_rate": float(failed.mean()), "flipped_to_negative": float(flipped.mean()),
            "mean_change": float((after[:, positive] - before[:, positive]).mean())}


def probe(pipeline, *, templates: str | Path | None = None, texts: list[str] | None = None) -> dict[str, Any]:
    """Every test above on a classification pipeline (``predict`` -> probabilities)."""
    labels = list(pipeline.labels)

    def predict(batch: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(batch), 64):
            out += [[r["probabilities"][label] for label in labels]
                    for r in pipeline.predict(batch[i : i + 64], truncate=True)]
        return np.asarray(out, dtype=np.float64)

    groups = load_groups(templates)
    result: dict[str, Any] = {"labels": labels, "templates": counterfactual_templates(predict, groups)}
    if texts:
        result["inputs"] = counterfactual_inputs(predict, texts, groups)
        result["invariance"] = invariance(predict, texts, groups)
    result["negation"] = negation(predict, labels)
    return result


def bias_png(result: dict, path: str | Path) -> Path:
    """Mean change per group with its 95 % interval, one panel per set (templates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = result["templates"]
    fig, axes = plt.subplots(1, len(sets), figsize=(3.2 * len(sets), 3.4), squeeze=False)
    for ax, (name, groups) in zip(axes[0], sets.items()):
        names = list(groups)
        means = [groups[g]["mean_change"] for g in names]
        errors = np.array([[m - groups[g]["change_ci"][0], groups[g]["change_ci"][1] - m]
                           for g, m in zip(names, means)]).T
        ax.barh(names, means, xerr=errors, color=["#2b59c3" if m >= 0 else "#b42318" for m in means])
        ax.axvline(0, color="#555", linewidth=0.8)
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
    fig.suptitle("change of the probability of each template's label, by group (95% CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

"""Print the mean rank of each method from a human_rank answers CSV, as a Markdown table.

  python tools/human_rank/summarise.py answers.csv [--title="CUB"]

The table follows the layout of Table 2 of Yuan & Peng's SDN paper (ACM MM 2018): one row per method,
mean ± standard deviation of its image quality rank and of its text
correlation rank (1 is the best), over every (rater, caption) answer. The
standard deviation is the population one (divided by the number of answers).
Rows that repeat a (rater, caption, method) answer are counted once, keeping
the last, and malformed rows are left out; both are counted in the notes
under the table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys

CSV_FIELDS = ("rater_id", "caption_id", "method", "slot", "order", "quality_rank",
              "correlation_rank", "timestamp")


def read_answers(path: str) -> tuple[dict, dict]:
    """Return ({(rater, caption, method): (quality, correlation)}, skip counts by reason).

    Raises:
      ValueError: the file lacks the kit's columns.
    """
    answers = {}
    skipped = {"repeated answer": 0, "malformed row": 0}
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [name for name in CSV_FIELDS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path!r} lacks the columns {missing}; pass a CSV written by "
                             "tools/human_rank/serve.py.")
        for row in reader:
            try:
                key = (row["rater_id"], int(row["caption_id"]), row["method"])
                ranks = (int(row["quality_rank"]), int(row["correlation_rank"]))
            except (TypeError, ValueError):
                skipped["malformed row"] += 1
                continue
            if key in answers:
                skipped["repeated answer"] += 1
            answers[key] = ranks
    return answers, skipped


def summarise(answers: dict) -> dict:
    """Return {method: {"quality": (mean, std), "correlation": (mean, std), "count": n}}."""
    by_method: dict = {}
    for (_, _, method), (quality, correlation) in answers.items():
        entry = by_method.setdefault(method, {"quality": [], "correlation": []})
        entry["quality"].append(quality)
        entry["correlation"].append(correlation)
    return {method: {"quality": (statistics.fmean(values["quality"]),
                                 statistics.pstdev(values["quality"])),
                     "correlation": (statistics.fmean(values["correlation"]),
                                     statistics.pstdev(values["correlation"])),
                     "count": len(values["quality"])}
            for method, values in by_method.items()}


def format_table(summary: dict, answers: dict, skipped: dict, title: str = "") -> str:
    """Return the Markdown table, methods ordered by mean quality rank (best first)."""
    heading = f" ({title})" if title else ""
    lines = [f"| Method | Image quality rank{heading} | Text correlation rank{heading} "
             "| Answers |", "|---|---|---|---|"]
    for method, entry in sorted(summary.items(), key=lambda item: item[1]["quality"][0]):
        quality, correlation = entry["quality"], entry["correlation"]
        lines.append(f"| {method} | {quality[0]:.2f} ± {quality[1]:.2f} | "
                     f"{correlation[0]:.2f} ± {correlation[1]:.2f} | {entry['count']} |")
    raters = {rater for rater, _, _ in answers}
    captions = {caption for _, caption, _ in answers}
    lines += ["", f"{len(raters)} raters, {len(captions)} captions; rank 1 is the best."]
    for reason, count in skipped.items():
        if count:
            lines.append(f"Left out {count} rows: {reason}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("answers", help="CSV written by tools/human_rank/serve.py.")
    parser.add_argument("--title", default="", help="Dataset name shown in the column heads.")
    args = parser.parse_args(argv)
    try:
        answers, skipped = read_answers(args.answers)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not answers:
        print(f"error: {args.answers!r} has no answers yet.", file=sys.stderr)
        return 1
    sys.stdout.write(format_table(summarise(answers), answers, skipped, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())

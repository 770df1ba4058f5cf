"""A reporter: each category's highest-scoring test images, and one line per category."""

from adcore.api import CategoryOutputs, CategoryResult, Reporter, RunContext, RunResult


class TopScores(Reporter):
    def __init__(self, top: int) -> None:
        self.top = top

    def on_category(
        self, result: CategoryResult, outputs: CategoryOutputs | None, context: RunContext
    ) -> None:
        if outputs is None:  # a resumed category: its files are already there
            return
        order = outputs.scores.argsort()[::-1][: self.top]  # [top], highest first
        lines = ["score,label,path"] + [
            f"{outputs.scores[i]:.6g},{outputs.samples[i].label},{outputs.samples[i].image_path}"
            for i in order
        ]
        path = context.layout.category(result.category) / "top_scores.csv"
        path.write_text("\n".join(lines) + "\n")

    def on_run(self, result: RunResult, context: RunContext) -> None:
        lines = [r.line(result.metric_names) for r in result.categories]
        (context.run_dir / "categories.txt").write_text("\n".join(lines) + "\n")

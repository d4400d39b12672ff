"""The page (Gradio): the Ask and Compare tabs, served on 127.0.0.1 by default.

Bad input is a message on the page (the status line under each tab's button), never a trace.
Gradio writes uploads and outputs to the page's own temporary folder (``GRADIO_TEMP_DIR``), removed
when the server stops; choices a browser sends are keys of tables built from the command line.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amr.demo.ask import Answer, Asker, SplitQuery, checkpoints_of, split_queries
from amr.demo.compare import COLUMNS, Comparison
from amr.errors import InputError
from amr.results.report.figures import saliency_figure

PLAYERS = 5  # audio players under the Ask tab's table (the first moments)
MOMENT_COLUMNS = ["rank", "start", "end", "score"]


@dataclass
class DemoConfig:
    ckpts: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    data_root: Path | None = None
    clap_weights: str | None = None
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860


def players(segments: list[Path]) -> list[Any]:
    """The players' updates: the first moments' audio shown, the other players hidden."""
    import gradio as gr

    paths = [str(p) for p in segments[:PLAYERS]]
    return [gr.Audio(value=p, visible=True) for p in paths] + [gr.Audio(value=None, visible=False)] * (
        PLAYERS - len(paths)
    )


def error_line(e: Exception) -> str:
    return f"**Error:** {e}"


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to a file below ``folder`` (no way out through ``..`` or links)."""
    return Path(path).resolve().is_relative_to(folder.resolve())


class Page:
    """The page's state: the checkpoints and recordings offered, the runs compared, its folder."""

    def __init__(self, cfg: DemoConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.asker = Asker(checkpoints_of(cfg.ckpts, cfg.runs), cfg.clap_weights, cfg.device, workdir)
        self.recordings: dict[str, SplitQuery] = split_queries(cfg.data_root) if cfg.data_root else {}
        self.comparison: Comparison | None = None
        self.compare_error = ""
        if cfg.runs:
            try:
                self.comparison = Comparison.load(cfg.runs)
            except InputError as e:  # shown on the Compare tab
                self.compare_error = error_line(e)

    def ask(self, ckpt: str, audio: str | None, picked: str | None, query: str, top_k: float, progress: Any) -> tuple:
        """Handler of the Ask button: (status, saliency figure, moments table, players...)."""
        empty: tuple[Any, ...] = (None, [], *players([]))
        try:
            path = Path(audio) if audio else None
            if path is not None and not inside(path, self.workdir):
                raise InputError("audio is read only from this page's uploads", str(path))
            if picked and picked not in self.recordings:
                raise InputError("not one of the recordings this page offers", picked)
            chosen = self.recordings.get(picked) if picked and path is None else None
            answer = self.asker.ask(ckpt, query, int(top_k), path, chosen, lambda f, what: progress(f, desc=what))
        except (InputError, ValueError) as e:
            return (error_line(e), *empty)
        return self._shown(answer)

    def _shown(self, a: Answer) -> tuple:
        gt = ", ".join(f"[{st:g}, {ed:g}]" for st, ed in a.ground_truth)
        status = f"{len(a.moments)} moments · {a.decoding} · {a.features} features" + (f" · GT {gt}" if gt else "")
        rows = [[k + 1, m.start, m.end, round(m.score, 4)] for k, m in enumerate(a.moments)]
        fig = saliency_figure(a.saliency, [(m.start, m.end) for m in a.moments], a.ground_truth)
        return (status, fig, rows, *players(a.segments))

    def pick(self, picked: str | None) -> str:
        """A split's query picked: its text goes to the query box."""
        sq = self.recordings.get(picked or "")
        return sq.query.query if sq is not None else ""

    def queries(self, search: str, a: str | None, b: str | None) -> Any:
        import gradio as gr

        if self.comparison is None:
            return gr.Dropdown(choices=[])
        return gr.Dropdown(choices=self.comparison.choices(search, a, b)[:500])

    def compare(self, qid: str | None, top: float) -> tuple:
        """Handler of a query chosen on the Compare tab: (status, timeline, table)."""
        if self.comparison is None:
            return self.compare_error or error_line(InputError("no runs given (--runs)", "--runs")), None, []
        try:
            if not qid:
                raise InputError("pick a query", "query")
            fig, rows, about = self.comparison.view(qid, int(top))
        except InputError as e:
            return error_line(e), None, []
        return about, fig, rows


def build(page: Page) -> Any:
    """The Blocks of the page."""
    import gradio as gr

    with gr.Blocks(title="amr demo") as blocks:
        gr.Markdown("# amr: where does it happen?")
        with gr.Tab("Ask"):
            _ask_tab(gr, page)
        with gr.Tab("Compare"):
            _compare_tab(gr, page)
    return blocks


def _ask_tab(gr: Any, page: Page) -> None:
    names = list(page.asker.checkpoints)
    ckpt = gr.Dropdown(names, value=names[0] if names else None, label="checkpoint", elem_id="ckpt")
    with gr.Row():
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio", elem_id="audio")
        picked = gr.Dropdown(list(page.recordings), value=None, label="or a recording of a split", elem_id="picked")
    query = gr.Textbox(label="query", elem_id="query")
    top_k = gr.Slider(1, 10, value=5, step=1, label="top-k", elem_id="topk")
    go = gr.Button("Ask", variant="primary", elem_id="ask")
    status = gr.Markdown(elem_id="ask-status")
    plot = gr.Plot(label="saliency over time", elem_id="saliency")
    table = gr.Dataframe(headers=MOMENT_COLUMNS, label="moments", elem_id="moments", interactive=False)
    audios = [
        gr.Audio(label=f"moment {k + 1}", type="filepath", interactive=False, visible=False) for k in range(PLAYERS)
    ]
    picked.change(page.pick, picked, query)

    def ask(
        c: str,
        a: str | None,
        p: str | None,
        q: str,
        k: float,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple:
        """Gradio finds the progress bar it fills (MS-CLAP's too) by this default."""
        return page.ask(c, a, p, q, k, progress)

    go.click(ask, [ckpt, audio, picked, query, top_k], [status, plot, table, *audios], api_name="ask")


def _compare_tab(gr: Any, page: Page) -> None:
    systems = list(page.comparison.systems) if page.comparison else []
    with gr.Row():
        search = gr.Textbox(label="search the queries", elem_id="search")
        a = gr.Dropdown(systems, value=None, label="sort by IoU difference: system A", elem_id="sys-a")
        b = gr.Dropdown(systems, value=None, label="and system B", elem_id="sys-b")
    first = page.comparison.choices() if page.comparison else []
    qid = gr.Dropdown(first[:500], value=None, label="test query", elem_id="qid")
    top = gr.Slider(1, 10, value=3, step=1, label="windows per system", elem_id="top")
    status = gr.Markdown(page.compare_error, elem_id="compare-status")
    plot = gr.Plot(label="timeline", elem_id="timeline")
    table = gr.Dataframe(headers=COLUMNS, label="windows", elem_id="windows", interactive=False)
    for box in (search, a, b):
        box.change(page.queries, [search, a, b], qid)
    show = gr.Button("Show", elem_id="show")
    show.click(page.compare, [qid, top], [status, plot, table], api_name="compare")
    qid.change(page.compare, [qid, top], [status, plot, table])


def serve(cfg: DemoConfig, block: bool = True) -> Any:
    """Start the page; its temporary folder is removed when the server stops."""
    workdir = Path(tempfile.mkdtemp(prefix="amr-demo-"))
    os.environ["GRADIO_TEMP_DIR"] = str(workdir)  # uploads and outputs: the page's own folder
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if block:  # stopped by a signal, too, the folder goes
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(f"uploads and the moments' audio go to {workdir} (removed when the page stops)", flush=True)
    try:
        blocks = build(Page(cfg, workdir))
        blocks.queue().launch(
            server_name=cfg.host, server_port=cfg.port, share=False, prevent_thread_lock=not block, show_error=False
        )
        return blocks
    finally:
        if block:
            shutil.rmtree(workdir, ignore_errors=True)

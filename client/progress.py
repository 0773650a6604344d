"""The progress page: each practised skill's mastery after every answer, as a server-side SVG line chart.

The points are the mastery log (client DB migration 8): the knowledge state the service computed after each
answer, as the student saw it then. x is the answer number (1 = the student's first answer)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from flask import Flask, redirect, render_template, url_for
from werkzeug.wrappers import Response

from client import db
from client.plots import Series, line_chart
from client.tutor import skill_label, skill_order


def mastery_series(history: list[tuple[int, dict[str, dict[str, float]]]]) -> list[Series]:
    """One series per skill with evidence (answers in it), from its first answer on; easiest skill first."""
    points: dict[int, list[tuple[float, float]]] = {}
    for n, state in history:
        for tag, s in state.items():
            if int(s.get("evidence", 0)) > 0:
                points.setdefault(int(tag), []).append((float(n), round(100 * float(s["mastery"]), 1)))
    return [Series(skill_label(t), points[t]) for t in sorted(points, key=skill_order)]


def register_routes(app: Flask, conn: Callable[[], sqlite3.Connection], student_id: Callable[[], int | None]) -> None:
    @app.get("/progress")
    def progress() -> str | Response:
        sid = student_id()
        if sid is None:
            return redirect(url_for("index"))
        history = db.mastery_history(conn(), sid)
        series = mastery_series(history)
        # One small chart per skill: sixteen lines and their legend in one chart are unreadable on a phone.
        x_range = (1.0, max(2.0, float(max(n for n, _ in history)))) if history else (1.0, 2.0)
        charts = [line_chart([s], s.name, "answer", "mastery (%)", x_range=x_range, y_range=(0, 100)) for s in series]
        latest = history[-1][1] if history else {}
        levels = [
            (skill_label(int(t)), s["level"], 100 * float(s["mastery"]), int(s.get("evidence", 0)))
            for t, s in sorted(latest.items(), key=lambda kv: skill_order(int(kv[0])))
        ]
        return render_template("progress.html", charts=charts, levels=levels)

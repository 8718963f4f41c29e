"""A reference ASHA (Li et al., MLSys 2020, Algorithm 2), written apart from imgtrain/sweep/asha_rules.py: it
replays a ledger's event log in order and checks every decision against the results recorded before it."""
from __future__ import annotations

import math


def replay(ledger: dict) -> list[str]:
    """The problems found (empty: every start, promotion and pruning is what ASHA decides at that moment)."""
    rungs, eta, mode = ledger["rungs"], ledger["eta"], ledger["mode"]
    grids = [e for e in ledger["events"] if e["event"] == "grid"]
    order = [] if grids else list(ledger["order"])  # the grid as it stood at each event (a resubmission grows it)
    last = len(rungs) - 1
    results: dict[int, dict[str, tuple]] = {k: {} for k in range(len(rungs))}
    promoted: dict[int, list[str]] = {k: [] for k in range(len(rungs))}
    where: dict[str, tuple[str, int]] = {}  # cell -> (state, rung)
    started: list[str] = []
    problems: list[str] = []

    def best_first(k):
        def key(c):
            v, seq = results[k][c]
            return (1, 0, seq) if v is None else (0, -v if mode == "max" else v, seq)
        return sorted(results[k], key=key)

    def top(k):
        return best_first(k)[:math.floor(len(results[k]) / eta + 1e-9)]

    def candidates(k):  # a result without a value (no evaluation, NaN) never goes on
        return [c for c in top(k) if c not in promoted[k] and where.get(c) == ("paused", k)
                and results[k][c][0] is not None]

    def closed(k):
        if any(c not in started for c in order):
            return False
        if any(s == "training" and r <= k for s, r in where.values()):
            return False
        return not any(candidates(j) for j in range(k))

    for e in sorted(ledger["events"], key=lambda e: e["seq"]):
        c, k, kind = e["cell"], e["rung"], e["event"]
        if kind == "grid":
            order = list(e["order"])
            lost = [c for c in started if c not in order]
            if lost:
                problems.append(f"seq {e['seq']}: the grid dropped {lost}, which had started")
        elif kind == "start":
            due = [j for j in range(last) if candidates(j)]
            if due:
                problems.append(f"seq {e['seq']}: started {c} while rung {due} had a promotion due")
            waiting = [x for x in order if x not in started]
            if not waiting or c != waiting[0]:
                problems.append(f"seq {e['seq']}: started {c} out of grid order")
            started.append(c)
            where[c] = ("training", 0)
        elif kind == "promote":
            src = k - 1
            higher = [j for j in range(src + 1, last) if candidates(j)]
            if higher:
                problems.append(f"seq {e['seq']}: promoted {c} from rung {src} while rung {higher} had one due")
            cands = candidates(src)
            if not cands or cands[0] != c:
                problems.append(f"seq {e['seq']}: promoted {c} from rung {src}; ASHA would promote {cands[:1]}")
            promoted[src].append(c)
            where[c] = ("training", k)
        elif kind == "result":
            if c in results[k]:
                problems.append(f"seq {e['seq']}: a second result of {c} at rung {k}")
            if where.get(c) != ("training", k):
                problems.append(f"seq {e['seq']}: result of {c} at rung {k} but it was {where.get(c)}")
            results[k][c] = (e["value"], e["seq"])
            where[c] = ("done" if e.get("finished") or k == last else "paused", k)
        elif kind == "prune":
            if not closed(k):
                problems.append(f"seq {e['seq']}: pruned {c} at rung {k} before the rung was closed")
            if (c in top(k) and results[k][c][0] is not None) or where.get(c) != ("paused", k):
                problems.append(f"seq {e['seq']}: pruned {c} at rung {k}: in the top or not paused there")
            where[c] = ("pruned", k)
        elif kind == "unprune":
            if closed(k) or where.get(c) != ("pruned", k):
                problems.append(f"seq {e['seq']}: unpruned {c} at rung {k}, which is closed, or it was {where.get(c)}")
            where[c] = ("paused", k)
        elif kind == "fail":
            where[c] = ("failed", where.get(c, ("", 0))[1])
        elif kind == "retry":
            if where.get(c, ("",))[0] != "failed":
                problems.append(f"seq {e['seq']}: retry of {c}, which was {where.get(c)}")
            where[c] = ("training", where[c][1])
        elif kind in ("resume", "reclaim", "release"):
            if where.get(c, ("",))[0] != "training":
                problems.append(f"seq {e['seq']}: {kind} of {c}, which was {where.get(c)}")
    for k in range(last):
        if promoted[k] != ledger["promoted"].get(str(k), []):
            problems.append(f"rung {k}: the ledger says promoted {ledger['promoted'].get(str(k))}, the replay "
                            f"{promoted[k]}")
    return problems


def final_problems(ledger: dict) -> list[str]:
    """At the end of a sweep: every cell started and ended (done, pruned or failed), nothing promotable left."""
    out = replay(ledger)
    states = {c: ledger["cells"].get(c, {}).get("state") for c in ledger["order"]}
    open_cells = {c: s for c, s in states.items() if s not in ("done", "pruned", "failed")}
    if open_cells:
        out.append(f"cells not finished: {open_cells}")
    return out

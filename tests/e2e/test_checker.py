"""The fault checker (checker.py) finds each kind of wrong history it looks for: a checker that
cannot fail would make every fault scenario pass."""

from __future__ import annotations

from checker import History, Read, compare


def healthy() -> tuple[History, list[tuple[int, int, int]], dict[int, dict[int, bytes]]]:
    h = History()
    final = []
    for value in range(6):
        p, off = value % 2, value // 2
        h.acked[(p, off)] = value
        final.append((p, off, value))
    h.reads[0] = [None] + [Read(p, off, v) for p, off, v in final]
    logs = {0: {1: b"abc", 2: b"abc", 3: b"abc"}, 1: {2: b"xyz", 1: b"xyz", 3: b"xyz"}}
    return h, final, logs


def test_a_healthy_history_has_no_problems():
    report = compare(*healthy())
    assert report.problems() == [], report.problems()
    assert (report.acknowledged, report.reads) == (6, 6)


def test_each_kind_of_fault_is_reported():
    h, final, logs = healthy()
    h.acked[(0, 3)] = 6                           # acknowledged, not in the log: lost
    final = final[:5] + [(1, 2, 5), (1, 3, 3)]    # 3 written twice, and after 5
    h.reads[1] = [None, Read(0, 0, 0), Read(0, 9, 99),  # read what the log does not have
                  Read(0, 0, 0)]                  # and went back within one assignment
    logs[1][3] = b"xyZ"                           # a follower's log differs from its leader's
    report = compare(h, final, logs)
    assert [v for _, _, v, _ in report.lost] == [6]
    assert [d[0] for d in report.duplicated] == [3]
    assert report.reordered == [(1, 3, 5, 3)]
    assert report.bad_reads == [(1, 0, 9, 99, None)]
    assert report.backwards == [(1, 0, 9, 0)]
    assert report.divergent == [(1, 3, 3, 3)]
    assert report.unread == 1
    assert len(report.problems()) == 7


def test_a_new_assignment_may_read_again():
    h, final, logs = healthy()
    h.reads[0] += [None, Read(0, 0, 0)]  # after a rebalance, from the committed offset
    assert compare(h, final, logs).backwards == []

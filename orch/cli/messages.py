"""English for the seed's Chinese messages, which the wire keeps unchanged.

The CLI prints a message with its English beside it (``只能重启已停止的作业
(only a stopped job can be restarted)``); every Chinese message of the seed
API is listed, a test checks that the server sends no other.
"""

from __future__ import annotations

import re

# The seed's text -> English; ``{job_id}`` stands for the job's id in both.
SEED_MESSAGES = {
    "作业评估已加入队列": "job evaluation queued",
    "作业更新评估已加入队列": "job update evaluation queued",
    "作业重启评估已加入队列": "job restart evaluation queued",
    "作业 {job_id} 已停止": "job {job_id} stopped",
    "作业 {job_id} 及其相关资源已删除": "job {job_id} and its resources deleted",
    "作业不存在": "job not found",
    "只能重启已停止的作业": "only a stopped job can be restarted",
    "获取节点信息失败": "could not read the nodes",
}


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{job_id}"), "(?P<job_id>.+)"))


_PATTERNS = [(_pattern(zh), en) for zh, en in SEED_MESSAGES.items()]


def in_english(message: str) -> str | None:
    """The English of a seed message, None for any other text."""
    for pattern, english in _PATTERNS:
        found = pattern.fullmatch(message)
        if found:
            return english.format(**found.groupdict())
    return None


def with_english(message: str) -> str:
    """``作业不存在 (job not found)``; other messages unchanged."""
    english = in_english(message)
    return f"{message} ({english})" if english else message

"""Role presets, as data. A panel is a list of preset keys; the moderator always closes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    key: str
    name: str
    instructions: str


ROLES: dict[str, Role] = {
    role.key: role
    for role in (
        Role(
            "fundamentals",
            "Fundamentals Analyst",
            "Assess revenue, margins, cash flow, balance sheet and valuation. Cite the numbers you rely on.",
        ),
        Role(
            "technical",
            "Technical Analyst",
            "Read price action, trend, support/resistance, volume and momentum. Name concrete levels.",
        ),
        Role(
            "sentiment",
            "News & Sentiment Analyst",
            "Summarise recent news, analyst actions and market sentiment, and how they may move the price.",
        ),
        Role(
            "bull",
            "Bull Researcher",
            "Build the strongest evidence-based case for buying. Rebut the bearish points made so far.",
        ),
        Role(
            "bear",
            "Bear Researcher",
            "Build the strongest evidence-based case against buying. Rebut the bullish points made so far.",
        ),
        Role(
            "risk",
            "Risk Manager",
            "Identify the key risks, position sizing and stop conditions given everything said so far.",
        ),
    )
}

MODERATOR = Role(
    "moderator",
    "Moderator",
    "Close the discussion. Reply with ONLY a JSON object with the fields "
    '"stance" ("bullish", "bearish" or "neutral"), "confidence" (a number from 0 to 1) and '
    '"summary" (at most 80 words weighing the arguments).',
)

DEFAULT_PANEL = ("fundamentals", "technical", "bull", "bear")


def system_prompt(topic: str, panel: list[str]) -> str:
    """Shared by every agent of a discussion, so the prompt prefix (and upstream cache) is identical."""
    members = "\n".join(f"- {ROLES[k].name}: {ROLES[k].instructions}" for k in panel)
    return (
        "You are one member of an investment research panel. Each turn, one member speaks; "
        "be concise (under 150 words), factual, and build on earlier turns. In the conversation, each user "
        "message names the member who speaks next and the assistant message after it is that member's turn; "
        "answer as the member the last user message names.\n"
        f"Topic: {topic}\nPanel:\n{members}\n- {MODERATOR.name}: {MODERATOR.instructions}"
    )


def speaker_cue(role: Role) -> str:
    """The user message that hands the turn to `role`; the same text every round, so it stays in the prefix."""
    return f"Now speak as the {role.name}. {role.instructions}"

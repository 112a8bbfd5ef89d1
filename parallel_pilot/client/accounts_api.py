"""The SDK's administration calls: users, API tokens, signed-in browsers, join tokens,
revoking workers.

``Client`` inherits them; they are here to keep ``sdk.py`` about jobs and their files.
"""

from __future__ import annotations

from urllib.parse import quote

from parallel_pilot.core.protocol import (
    Ack,
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenInfo,
    JoinTokenList,
    PasswordSet,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    TokenList,
    UserCreate,
    UserCreated,
    UserList,
    UserSummary,
)
from parallel_pilot.http import Connection


class AccountCalls:
    """Account management through ``self.connection`` (a ``Client``'s)."""

    connection: Connection

    def create_user(self, name: str, *, admin: bool = False,
                    password: str | None = None) -> UserCreated:
        """Create a user (admin only); the answer holds their first API token, shown once."""
        body = UserCreate(name=name, is_admin=admin, password=password)
        return self.connection.call("POST", "/users", UserCreated, body=body, retry=False)

    def set_password(self, name: str, password: str) -> None:
        """Set a user's password (admin only)."""
        self.connection.call("PUT", f"/users/{quote(name, safe='')}/password", Ack,
                             body=PasswordSet(password=password))

    def users(self) -> list[UserSummary]:
        """Every account (admin only)."""
        return self.connection.call("GET", "/users", UserList).users

    def disable_user(self, name: str) -> None:
        """Disable a user (admin only); all their tokens stop working."""
        self.connection.call("POST", f"/users/{quote(name, safe='')}/disable", Ack)

    def create_token(self, name: str = "", *,
                     expires_seconds: int | None = None) -> TokenCreated:
        """A new API token for this user, shown once."""
        body = TokenCreate(name=name, expires_seconds=expires_seconds)
        return self.connection.call("POST", "/tokens", TokenCreated, body=body, retry=False)

    def tokens(self) -> list[TokenInfo]:
        """This user's API tokens that are not revoked."""
        return self.connection.call("GET", "/tokens", TokenList).tokens

    def revoke_token(self, token_id: int) -> None:
        """Revoke one of this user's API tokens by its id."""
        self.connection.call("DELETE", f"/tokens/{int(token_id)}", Ack)

    def sessions(self) -> list[TokenInfo]:
        """The browsers signed in to the dashboard as this user, newest first
        (``created_at`` is when each signed in)."""
        return self.connection.call("GET", "/sessions", TokenList).tokens

    def sign_out(self, session_id: int) -> None:
        """End one signed-in browser's session by its id (from ``sessions()``)."""
        self.connection.call("DELETE", f"/sessions/{int(session_id)}", Ack)

    def create_join_token(self, name: str = "", *, uses: int | None = None,
                          expires_seconds: int | None = None,
                          approval_required: bool = False,
                          max_slots: int | None = None) -> JoinTokenCreated:
        """A token workers join with (admin only), shown once. ``approval_required``:
        workers joining with it get no tasks until an admin approves each; ``max_slots``:
        the slots a worker joining with it is given at most."""
        body = JoinTokenCreate(name=name, uses=uses, expires_seconds=expires_seconds,
                               approval_required=approval_required, max_slots=max_slots)
        return self.connection.call("POST", "/join-tokens", JoinTokenCreated, body=body,
                                    retry=False)

    def join_tokens(self) -> list[JoinTokenInfo]:
        """Every join token with its state (admin only); never the secret itself."""
        return self.connection.call("GET", "/join-tokens", JoinTokenList).join_tokens

    def revoke_join_token(self, token_id: int) -> None:
        """Revoke a join token (admin only): no new worker can join with it."""
        self.connection.call("DELETE", f"/join-tokens/{int(token_id)}", Ack)

    def revoke_worker(self, worker_id: int) -> None:
        """Revoke a worker (admin only): its token is refused, its tasks requeued."""
        self.connection.call("POST", f"/workers/{int(worker_id)}/revoke", Ack)

    def approve_worker(self, worker_id: int) -> None:
        """Let a worker waiting for approval get tasks (admin only)."""
        self.connection.call("POST", f"/workers/{int(worker_id)}/approve", Ack)

    def trust_worker(self, worker_id: int, trusted: bool = True) -> None:
        """Vouch for a worker, or take it back (admin only): a trusted worker's sandbox
        claim is believed and its "a retry cannot help" is final."""
        action = "trust" if trusted else "untrust"
        self.connection.call("POST", f"/workers/{int(worker_id)}/{action}", Ack)

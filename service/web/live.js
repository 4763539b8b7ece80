// A discussion's live events over the service's WebSocket: single-use ticket, resume after the last seq.

import { postJson, wsUrl } from "./api.js";

const MAX_BACKOFF_MS = 10000;

export class DiscussionStream {
  /** `onEvent(event)` gets each event once, in seq order; `onState(state)`: connecting|live|reconnecting|gone. */
  constructor(discussionId, { onEvent, onState }) {
    this.id = discussionId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.after = 0; // the last seq handed to onEvent
    this.attempts = 0;
    this.ended = false;
    this.socket = null;
    this.timer = null;
  }

  start() {
    this.onState("connecting");
    this.connect();
  }

  /** Stop for good (the view changed or the discussion finished). */
  close() {
    this.ended = true;
    clearTimeout(this.timer);
    this.socket?.close(1000);
  }

  async connect() {
    if (this.ended) return;
    let ticket;
    try {
      ({ ticket } = await postJson("/api/ws-ticket", { discussion_id: this.id }));
    } catch (error) {
      if (error.status === 404 || error.status === 401) {
        this.ended = true;
        this.onState("gone");
        return;
      }
      this.retry(null);
      return;
    }
    if (this.ended) return;
    const query = new URLSearchParams({ ticket, after: String(this.after) });
    const socket = new WebSocket(wsUrl(`/ws/discussions/${this.id}?${query}`));
    this.socket = socket;
    let hint = null;
    socket.onopen = () => {
      this.attempts = 0;
      this.onState("live");
    };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "reconnect") {
        hint = event; // the server is draining: come back after the delay it asks for
        return;
      }
      if (typeof event.seq !== "number" || event.seq <= this.after) return; // never twice
      this.after = event.seq;
      this.onEvent(event);
      if (event.type === "discussion_finished") this.close();
    };
    socket.onclose = () => {
      if (this.socket === socket) this.socket = null;
      if (!this.ended) this.retry(hint);
    };
  }

  retry(hint) {
    this.attempts += 1;
    this.onState("reconnecting");
    const backoff = Math.min(500 * 2 ** (this.attempts - 1), MAX_BACKOFF_MS) * (0.5 + Math.random() / 2);
    this.timer = setTimeout(() => this.connect(), hint ? hint.after_ms : backoff);
  }
}

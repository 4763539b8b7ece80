// Agents' answers as sanitised Markdown, by markdown-it (vendored unchanged; version, source and licence in
// "./vendor/markdown-it.LICENSE.txt"). With html: false, raw HTML in an answer is escaped and shown as text, and
// markdown-it's own link check drops javascript:, vbscript:, file: and non-image data: URLs.

import markdownit from "./vendor/markdown-it.esm.min.js";

const md = markdownit({ html: false, linkify: true });
// An image would be fetched from wherever the model points; the page's CSP would block it anyway, so show
// the link instead.
md.disable("image");

const renderLinkOpen = md.renderer.rules.link_open ?? ((tokens, i, options, env, self) => self.renderToken(tokens, i, options));
md.renderer.rules.link_open = (tokens, i, options, env, self) => {
  // A link opens outside the console and cannot reach back into it (window.opener) or learn its URL.
  tokens[i].attrSet("target", "_blank");
  tokens[i].attrSet("rel", "noopener noreferrer");
  return renderLinkOpen(tokens, i, options, env, self);
};

/** Show `text` rendered as Markdown inside `element` (its children are replaced; styled by .markdown). */
export function renderMarkdown(element, text) {
  element.innerHTML = md.render(text);
  element.classList.add("markdown");
}

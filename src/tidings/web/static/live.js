// Live updates for tidings' pages, by server-sent events (see tidings/web/live.py).
// The element with data-stream names the stream. Each "upsert" message carries
// the HTML of one row, rendered by the server: it replaces the element with
// the same id, or goes into its container, kept sorted by data-order.
(function () {
  "use strict";

  function confirmForms() {
    document.addEventListener("submit", function (event) {
      var question = event.target.getAttribute("data-confirm");
      if (question && !window.confirm(question)) {
        event.preventDefault();
      }
    });
  }

  function element(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function comesBefore(order, other, direction) {
    return direction === "asc" ? order < other : order > other;
  }

  function insert(container, node, order) {
    var direction = container.getAttribute("data-direction") || "desc";
    var children = container.children;
    for (var i = 0; i < children.length; i++) {
      var other = children[i].getAttribute("data-order");
      if (other !== null && comesBefore(order, other, direction)) {
        container.insertBefore(node, children[i]);
        return;
      }
    }
    container.appendChild(node);
  }

  function upsert(change) {
    var node = element(change.html);
    if (!node) { return; }
    var current = document.getElementById(change.key);
    if (current) {
      current.replaceWith(node);
      node.classList.add("changed");
      return;
    }
    var container = document.getElementById(change.container);
    if (!container) { return; }
    var empty = container.querySelector(":scope > .empty");
    if (empty) { empty.remove(); }
    insert(container, node, change.order);
    node.classList.add("fresh");
    var limit = parseInt(container.getAttribute("data-limit") || "0", 10);
    while (limit > 0 && container.children.length > limit) {
      container.removeChild(container.lastElementChild);
    }
  }

  function remove(change) {
    var current = document.getElementById(change.key);
    if (current) { current.remove(); }
  }

  function follow(root) {
    var indicator = document.getElementById("live-indicator");
    function show(state, text) {
      if (!indicator) { return; }
      indicator.hidden = false;
      indicator.setAttribute("data-state", state);
      indicator.textContent = text;
    }
    var source = new EventSource(root.getAttribute("data-stream"));
    source.onopen = function () { show("on", "Live"); };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) { show("off", "Offline"); }
      else { show("wait", "Reconnecting"); }
    };
    source.addEventListener("upsert", function (message) { upsert(JSON.parse(message.data)); });
    source.addEventListener("remove", function (message) { remove(JSON.parse(message.data)); });
  }

  confirmForms();
  var root = document.querySelector("[data-stream]");
  if (root && window.EventSource) {
    follow(root);
  }
})();

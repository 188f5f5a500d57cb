/*
 * The beacon-analytics tracker (docs/tracker.md). Put it on a page with
 *   <script defer src="https://stats.example.com/script.js" data-site="example.com"></script>
 * It sends a page view on load and on every navigation of a single-page app, and custom
 * events through window.beacon(name, {props: {...}}). The server minifies and gzips this
 * file when it starts (ingest/tracker/__init__.py): comments cost nothing, but the
 * minifier renames nothing, so names stay short where they repeat.
 *
 * What is sent, as one JSON object per request (our own POST /event):
 *   site_id, event_type ("page_view" or the custom event's name), url, referrer (when
 *   the page has one), screen_width, props (custom events with properties), path (only
 *   with data-hash: the path and the hash, since the server would drop the hash).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var attr = function (name) {
    return script.getAttribute("data-" + name);
  };
  var has = function (name) {
    return script.hasAttribute("data-" + name);
  };
  var site = attr("site") || location.hostname;
  // data-api: a first-party proxy's path or any other URL; by default the origin that
  // serves this script.
  var endpoint = attr("api") || new URL(script.src).origin + "/event";
  var hashRouting = has("hash");
  var dnt = navigator.doNotTrack || window.doNotTrack;

  // Why nothing is sent from this page, if anything stops it: development machines,
  // files, browsers driven by programs, and visitors who asked not to be tracked (where
  // the site chose to honour that).
  var skip =
    ((/^(localhost|127(\.\d+){3}|\[::1\])$/.test(location.hostname) ||
      location.protocol == "file:") &&
      !has("allow-localhost") &&
      "localhost") ||
    (navigator.webdriver && !has("allow-automation") && "automation") ||
    (has("respect-dnt") &&
      (dnt == 1 || dnt == "yes" || navigator.globalPrivacyControl) &&
      "do not track");

  function send(eventType, props) {
    if (skip) {
      console.warn("beacon: not sent: " + skip);
      return;
    }
    // Cut to the server's limits (URLs are ASCII here: percent-encoded, punycode hosts),
    // so that a page with a very long query still counts.
    var event = {
      site_id: site,
      event_type: eventType,
      url: location.href.slice(0, 2000),
      screen_width: screen.width,
    };
    if (document.referrer) event.referrer = document.referrer.slice(0, 2000);
    if (props && Object.keys(props).length) event.props = props;
    // Without it the server takes the path from url, where a hash is no part of it.
    if (hashRouting) event.path = (location.pathname + location.hash).slice(0, 2048);
    var body = JSON.stringify(event);
    // A string body goes as text/plain: a CORS-simple request, no preflight. sendBeacon
    // outlives the page; it is missing in old browsers and says false when its queue is
    // full, where fetch with keepalive does the same job.
    if (!(navigator.sendBeacon && navigator.sendBeacon(endpoint, body))) {
      fetch(endpoint, { method: "POST", body: body, keepalive: true }).catch(function () {});
    }
  }

  // One page view per page: a replaceState that keeps the URL (scroll restoration) or a
  // jump to an anchor (outside hash routing) is not a new one.
  var lastPage;
  function pageView() {
    var page = hashRouting ? location.href : location.href.split("#")[0];
    if (page != lastPage) {
      lastPage = page;
      send("page_view");
    }
  }

  ["pushState", "replaceState"].forEach(function (name) {
    var original = history[name];
    history[name] = function () {
      var result = original.apply(this, arguments);
      pageView();
      return result;
    };
  });
  addEventListener("popstate", pageView);
  if (hashRouting) addEventListener("hashchange", pageView);

  // window.beacon(name, {props: {key: "value"}}): a custom event. Calls made before this
  // script ran were queued by the snippet
  //   window.beacon = window.beacon || function () { (window.beacon.q = window.beacon.q || []).push(arguments) }
  // and are sent after the page view, in the order they were made.
  function beacon(name, options) {
    send(name, options && options.props);
  }
  var queued = (window.beacon && window.beacon.q) || [];
  window.beacon = beacon;

  // A page that the browser prerenders is not seen until it is shown.
  function start() {
    pageView();
    queued.forEach(function (args) {
      beacon.apply(null, args);
    });
  }
  if (document.prerendering) addEventListener("prerenderingchange", start, { once: true });
  else start();
})();

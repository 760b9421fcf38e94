// A stand-in for the BX24 JavaScript library (//api.bitrix24.com/api/v1/) for the local sandbox.
//
// Like the real library it runs inside the app's frame and talks to the portal page around it with
// postMessage; here that page is the sandbox's Contact Center (contact-center.js), which records the
// calls and resizes the frame. It covers what b24widget uses (init, installFinish, fitWindow,
// resizeWindow) and a little more (getAuth, refreshAuth, isAdmin, getLang, getDomain, placement.info,
// callMethod, getScrollSize, closeApplication). Never served in production: B24_JS_URL keeps the
// official URL there.
(function () {
  "use strict";
  if (window.BX24) return;

  var query = new URLSearchParams(window.location.search);
  var framed = window.parent && window.parent !== window;

  // The portal's origin, as the real library finds it: DOMAIN and PROTOCOL in the frame URL's query
  // (a portal puts them there); else the page that opened the frame.
  function portalOrigin() {
    var domain = query.get("DOMAIN");
    if (domain) return (query.get("PROTOCOL") === "1" ? "https://" : "http://") + domain;
    try {
      if (document.referrer) return new URL(document.referrer).origin;
    } catch (error) { /* no usable referrer */ }
    return null;
  }

  var origin = portalOrigin();
  var callbacks = {};
  var nextId = 1;
  var initData = null;
  var initWaiting = [];
  var initSent = false;

  function send(command, params, callback) {
    if (!framed || !origin) {
      if (window.console) console.warn("BX24 stand-in: not inside a portal frame; " + command + " ignored");
      return false;
    }
    var id = null;
    if (callback) {
      id = String(nextId++);
      callbacks[id] = callback;
    }
    window.parent.postMessage({ bx24standin: 1, command: command, params: params || {}, id: id,
                                appSid: query.get("APP_SID") || "" }, origin);
    return true;
  }

  window.addEventListener("message", function (event) {
    if (event.source !== window.parent || event.origin !== origin) return;
    var message = event.data;
    if (!message || message.bx24standin !== 1 || !message.id || !callbacks[message.id]) return;
    var callback = callbacks[message.id];
    delete callbacks[message.id];
    callback(message.result);
  });

  function whenReady(callback) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", callback);
    else callback();
  }

  function scrollSize() {
    var root = document.documentElement;
    var body = document.body;
    return {
      scrollWidth: Math.max(root.scrollWidth, body ? body.scrollWidth : 0),
      // The content's own height (not the frame's), so fitWindow can also shrink the frame.
      scrollHeight: Math.max(root.offsetHeight, body ? body.scrollHeight : 0),
    };
  }

  // What callMethod hands its callback, shaped like the real library's result object.
  function Result(answer, status) {
    this.answer = answer || {};
    this.status = status;
  }
  Result.prototype.data = function () { return this.answer.result; };
  Result.prototype.error = function () {
    return this.answer.error ? this.answer.error + (this.answer.error_description ? ": " + this.answer.error_description : "") : false;
  };
  Result.prototype.error_description = function () { return this.answer.error_description || ""; };
  Result.prototype.more = function () { return typeof this.answer.next !== "undefined"; };
  Result.prototype.total = function () { return this.answer.total; };

  var BX24 = {
    init: function (callback) {
      if (initData) {
        whenReady(callback);
        return;
      }
      if (typeof callback === "function") initWaiting.push(callback);
      if (initSent) return;
      initSent = send("init", {}, function (data) {
        initData = data || {};
        whenReady(function () {
          var waiting = initWaiting;
          initWaiting = [];
          waiting.forEach(function (fn) { fn(); });
        });
      });
    },
    installFinish: function () { send("installFinish", {}); },
    fitWindow: function (callback) {
      var size = scrollSize();
      send("fitWindow", { width: "100%", height: size.scrollHeight }, callback ? function () { callback(); } : null);
    },
    resizeWindow: function (width, height, callback) {
      send("resizeWindow", { width: width, height: height }, callback ? function () { callback(); } : null);
    },
    getScrollSize: scrollSize,
    getAuth: function () { return initData && initData.auth ? initData.auth : false; },
    refreshAuth: function (callback) {
      send("refreshAuth", {}, function (auth) {
        if (initData && auth) initData.auth = auth;
        if (callback) callback(auth || false);
      });
    },
    isAdmin: function () { return !!(initData && initData.isAdmin); },
    getLang: function () { return initData ? initData.lang : query.get("LANG"); },
    getDomain: function () { return initData ? initData.domain : query.get("DOMAIN"); },
    callMethod: function (method, params, callback) {
      send("callMethod", { method: method, params: params || {} }, function (reply) {
        reply = reply || {};
        if (callback) callback(new Result(reply.answer, reply.status));
      });
    },
    closeApplication: function () { send("closeApplication", {}); },
    placement: {
      info: function () {
        return initData ? { placement: initData.placement, options: initData.options || {} } : { placement: "", options: {} };
      },
    },
    standin: true, // tells a curious app (or a test) that this is not the real library
  };

  window.BX24 = BX24;
})();

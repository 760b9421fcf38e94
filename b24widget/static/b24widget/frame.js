// The widget's frame code, on Bitrix24's official frame library (@bitrix24/b24jssdk, the vendored UMD
// build that defines window.B24Js). The same page runs in a real portal and in the local sandbox: both
// speak the library's parent protocol. Pages call window.b24widgetFrame:
//   ready()        -> Promise of the initialized B24Frame (rejects outside a portal frame)
//   fit()          -> fit the portal's frame to this page's height (B24Frame.parent.fitWindow)
//   accessToken()  -> Promise of the user's current access token, refreshed through the portal if due
//   installFinish()-> tell the portal the install is done (it then reloads into the app)
//   setTitle(text) -> the title the portal shows above the frame (its slider's header)
//   close()        -> close the app's slider
(function () {
  "use strict";
  var initialized = null;

  function ready() {
    if (!initialized) {
      if (window.parent === window || !window.B24Js || !window.name) {
        initialized = Promise.reject(new Error("not inside a Bitrix24 frame"));
      } else {
        initialized = window.B24Js.initializeB24Frame();
      }
      initialized.catch(function () {});  // callers decide; an unused rejection is not an error
    }
    return initialized;
  }

  window.b24widgetFrame = {
    ready: ready,
    fit: function () {
      return ready().then(function (b24) { return b24.parent.fitWindow(); });
    },
    accessToken: function () {
      return ready().then(function (b24) {
        var auth = b24.auth.getAuthData();
        return auth ? auth : b24.auth.refreshAuth();
      }).then(function (auth) { return auth && auth.access_token ? auth.access_token : ""; });
    },
    installFinish: function () {
      return ready().then(function (b24) { return b24.installFinish(); });
    },
    setTitle: function (title) {
      return ready().then(function (b24) { return b24.parent.setTitle(title); });
    },
    close: function () {
      return ready().then(function (b24) { return b24.parent.closeApplication(); });
    },
  };
})();

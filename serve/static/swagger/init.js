// Boots the bundled Swagger UI 5 (swagger-ui-dist, see VERSION) on petray's OpenAPI 3.1.
// A file, not an inline script, so /docs runs under a CSP without 'unsafe-inline' scripts.
"use strict";
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Nothing leaves the hospital network: no validator badge calling validator.swagger.io.
    validatorUrl: null,
    persistAuthorization: false,
    tryItOutEnabled: false,
  });
});

// GraphiQL on GET /graphql (only when the server runs with api.graphiql = true). Bundled here
// instead of loaded from a CDN: the page runs on the dashboard's origin, next to its token,
// under the dashboard's Content-Security-Policy (scripts from this origin only, none inline).
import { createElement } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import 'graphiql/graphiql.css';

const url = new URL('/graphql', window.location.href);
const wsUrl = new URL(url);
wsUrl.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
// Subscriptions over graphql-ws (the toolkit loads the bundled `graphql-ws`); the headers
// typed into GraphiQL's headers tab ({"Authorization": "Bearer …"}) become its
// connection_init payload, which is where the server looks for the token.
const fetcher = createGraphiQLFetcher({ url: url.toString(), subscriptionUrl: wsUrl.toString() });
createRoot(document.getElementById('graphiql')).render(
  createElement(GraphiQL, { fetcher, defaultEditorToolsVisibility: 'headers' }),
);

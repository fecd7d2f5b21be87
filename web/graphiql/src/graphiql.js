// GraphiQL on GET /graphql (only when the server runs with api.graphiql = true). Bundled here
// instead of loaded from a CDN: the page runs on the dashboard's origin, next to its token,
// under the dashboard's Content-Security-Policy (scripts from this origin only, none inline).
import { createElement } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { getIntrospectionQuery } from 'graphql';
import 'graphiql/graphiql.css';

const url = new URL('/graphql', window.location.href);
const wsUrl = new URL(url);
wsUrl.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
// Subscriptions over graphql-ws (the toolkit loads the bundled `graphql-ws`); the headers
// typed into GraphiQL's headers tab ({"Authorization": "Bearer …"}) become its
// connection_init payload, which is where the server looks for the token.
const httpAndWs = createGraphiQLFetcher({ url: url.toString(), subscriptionUrl: wsUrl.toString() });
// GraphiQL's own schema query nests `ofType` 9 deep, past the server's depth limit (12); the
// schema wraps types at most 3 deep ([T!]!), so 6 levels describe every field.
const SCHEMA_QUERY = getIntrospectionQuery({ typeDepth: 6 });
const fetcher = (params, options) =>
  httpAndWs(params.operationName === 'IntrospectionQuery' ? { ...params, query: SCHEMA_QUERY } : params, options);
createRoot(document.getElementById('graphiql')).render(
  createElement(GraphiQL, { fetcher, defaultEditorToolsVisibility: 'headers' }),
);

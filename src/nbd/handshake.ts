/**
 * The server side of fixed newstyle negotiation (proto.md "Handshake", "Option types"):
 * option haggling until NBD_OPT_GO or NBD_OPT_EXPORT_NAME picks an export, with STARTTLS,
 * INFO, LIST, structured replies and metadata contexts. Anything malformed gets the spec's
 * error reply; a bad magic or an absurd option length is a hard disconnect.
 */
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { be16, be32, be64n, setBe16, setBe32, setBe64 } from '../io/bytes';
import { blockSizes, CONTEXTS, NbdExport, transmissionFlags } from './export';
import * as P from './protocol';
import { ByteReader } from './reader';
import { TlsConfig, upgradeToTls } from './tls';

/** Option data beyond this is treated as an attack (names and queries are 4096 bytes at most). */
const MAX_OPTION_DATA = 64 * 1024;
const EXPORT_NAME_PADDING = 124;

export interface HandshakeEnv {
  exports: NbdExport[];
  tls?: TlsConfig;
  shuttingDown(): boolean;
}

export interface Negotiated {
  stream: Duplex;
  reader: ByteReader;
  export: NbdExport;
  structured: boolean;
  /** Selected metadata contexts: the id of CONTEXTS[i] is i + 1. */
  contexts: string[];
}

class OptionError {
  constructor(
    readonly type: number,
    readonly message: string,
  ) {}
}

const invalid = (message: string) => new OptionError(P.NBD_REP_ERR_INVALID, message);

export const contextId = (name: string): number => CONTEXTS.indexOf(name) + 1;

/** The export a name selects: its own, or for the empty name ("default export") the first. */
function lookupExport(env: HandshakeEnv, name: string): NbdExport | undefined {
  return env.exports.find((x) => x.name === name) ?? (name === '' ? env.exports[0] : undefined);
}

function findExport(env: HandshakeEnv, name: string): NbdExport {
  const e = lookupExport(env, name);
  if (!e) throw new OptionError(P.NBD_REP_ERR_UNKNOWN, `no export named '${name}'`);
  return e;
}

/** A length-prefixed string at `at` inside option data, bounds-checked. */
function stringAt(data: Buffer, at: number): { value: string; end: number } {
  if (at + 4 > data.byteLength) throw invalid('option data is truncated');
  const n = be32(data, at);
  if (n > P.MAX_STRING || at + 4 + n > data.byteLength) throw invalid(`string length ${n} does not fit the option data`);
  return { value: data.toString('utf8', at + 4, at + 4 + n), end: at + 4 + n };
}

/** NBD_OPT_INFO / NBD_OPT_GO data: name, then a list of 16-bit information requests. */
function parseInfoRequest(data: Buffer): { name: string; requests: number[] } {
  const { value: name, end } = stringAt(data, 0);
  if (end + 2 > data.byteLength) throw invalid('option data is truncated');
  const n = be16(data, end);
  if (end + 2 + 2 * n !== data.byteLength) throw invalid(`${n} information requests do not match the option length`);
  const requests: number[] = [];
  for (let i = 0; i < n; i++) requests.push(be16(data, end + 2 + 2 * i));
  return { name, requests };
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT data: export name, then length-prefixed queries. */
function parseMetaRequest(data: Buffer): { name: string; queries: string[] } {
  const { value: name, end } = stringAt(data, 0);
  if (end + 4 > data.byteLength) throw invalid('option data is truncated');
  const n = be32(data, end);
  const queries: string[] = [];
  let at = end + 4;
  for (let i = 0; i < n; i++) {
    const q = stringAt(data, at);
    queries.push(q.value);
    at = q.end;
  }
  if (at !== data.byteLength) throw invalid('trailing bytes after the queries');
  return { name, queries };
}

/** Contexts a query names: exact names; for LIST, also "ns:" wildcards and no query at all. */
function matchContexts(queries: string[], list: boolean): string[] {
  if (list && queries.length === 0) return CONTEXTS;
  return CONTEXTS.filter((c) => queries.some((q) => q === c || (list && q.endsWith(':') && c.startsWith(q))));
}

function infoReply(option: number, type: number, body: Buffer): Buffer {
  const b = Buffer.alloc(2 + body.byteLength);
  setBe16(b, 0, type);
  b.set(body, 2);
  return P.optionReply(option, P.NBD_REP_INFO, b);
}

/** Runs option haggling on a socket's reader; resolves with the chosen export, or null once the session is over. */
export async function serverHandshake(first: ByteReader, env: HandshakeEnv): Promise<Negotiated | null> {
  let reader = first;
  const socket = reader.stream as Socket;
  let stream: Duplex = socket;
  let tlsActive = false;
  let structured = false;
  let meta: { exportName: string; contexts: string[] } | null = null;

  const greeting = Buffer.alloc(18);
  setBe64(greeting, 0, P.NBDMAGIC);
  setBe64(greeting, 8, P.IHAVEOPT);
  setBe16(greeting, 16, P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES);
  socket.write(greeting);
  const clientFlags = be32(await reader.read(4), 0);
  if ((clientFlags & ~(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES)) !== 0) return null;
  const noZeroes = (clientFlags & P.NBD_FLAG_C_NO_ZEROES) !== 0;

  const send = (b: Buffer) => stream.write(b);
  // Contexts count only when SET_META_CONTEXT named the export finally chosen.
  const negotiated = (e: NbdExport): Negotiated => ({
    stream,
    reader,
    export: e,
    structured,
    contexts: meta && structured && findExport(env, meta.exportName) === e ? meta.contexts : [],
  });

  for (;;) {
    const head = await reader.read(P.OPTION_HEADER_SIZE);
    if (be64n(head, 0) !== P.IHAVEOPT) return null;
    const option = be32(head, 8);
    const length = be32(head, 12);
    if (length > MAX_OPTION_DATA) return null;
    const data = await reader.read(length);
    try {
      if (env.shuttingDown() && option !== P.NBD_OPT_ABORT) throw new OptionError(P.NBD_REP_ERR_SHUTDOWN, 'the server is shutting down');
      if (env.tls?.required && !tlsActive && option !== P.NBD_OPT_STARTTLS && option !== P.NBD_OPT_ABORT) {
        if (option === P.NBD_OPT_EXPORT_NAME) return null; // cannot be refused with an error
        throw new OptionError(P.NBD_REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
      }
      switch (option) {
        case P.NBD_OPT_EXPORT_NAME: {
          const name = data.toString('utf8');
          const e = lookupExport(env, name);
          if (!e) return null;
          const reply = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING));
          setBe64(reply, 0, e.device.size);
          setBe16(reply, 8, transmissionFlags(e, structured));
          send(reply);
          return negotiated(e);
        }
        case P.NBD_OPT_ABORT:
          send(P.optionReply(option, P.NBD_REP_ACK));
          stream.end();
          return null;
        case P.NBD_OPT_LIST:
          if (length !== 0) throw invalid('NBD_OPT_LIST takes no data');
          for (const e of env.exports) {
            send(P.optionReply(option, P.NBD_REP_SERVER, Buffer.concat([P.lengthPrefixed(e.name), Buffer.from(e.description ?? '', 'utf8')])));
          }
          send(P.optionReply(option, P.NBD_REP_ACK));
          break;
        case P.NBD_OPT_STARTTLS: {
          if (!env.tls) throw new OptionError(P.NBD_REP_ERR_POLICY, 'TLS is not configured on this server');
          if (length !== 0 || tlsActive) throw invalid(tlsActive ? 'TLS is already active' : 'NBD_OPT_STARTTLS takes no data');
          send(P.optionReply(option, P.NBD_REP_ACK));
          if (reader.detach() !== 0) return null; // plaintext sent after STARTTLS: not a TLS client
          const secure = await upgradeToTls(socket, env.tls.options).catch(() => null);
          if (!secure) return null;
          stream = secure;
          reader = new ByteReader(secure);
          tlsActive = true;
          structured = false; // "the server MUST NOT preserve any negotiation state"
          meta = null;
          break;
        }
        case P.NBD_OPT_INFO:
        case P.NBD_OPT_GO: {
          const { name, requests } = parseInfoRequest(data);
          const e = findExport(env, name);
          const exportInfo = Buffer.alloc(10);
          setBe64(exportInfo, 0, e.device.size);
          setBe16(exportInfo, 8, transmissionFlags(e, structured));
          send(infoReply(option, P.NBD_INFO_EXPORT, exportInfo));
          if (requests.includes(P.NBD_INFO_NAME)) send(infoReply(option, P.NBD_INFO_NAME, Buffer.from(e.name, 'utf8')));
          if (requests.includes(P.NBD_INFO_DESCRIPTION) && e.description) {
            send(infoReply(option, P.NBD_INFO_DESCRIPTION, Buffer.from(e.description, 'utf8')));
          }
          const sizes = blockSizes(e);
          const bs = Buffer.alloc(12);
          setBe32(bs, 0, sizes.minimum);
          setBe32(bs, 4, sizes.preferred);
          setBe32(bs, 8, sizes.maximum);
          send(infoReply(option, P.NBD_INFO_BLOCK_SIZE, bs));
          send(P.optionReply(option, P.NBD_REP_ACK));
          if (option === P.NBD_OPT_GO) return negotiated(e);
          break;
        }
        case P.NBD_OPT_STRUCTURED_REPLY:
          if (length !== 0) throw invalid('NBD_OPT_STRUCTURED_REPLY takes no data');
          structured = true;
          send(P.optionReply(option, P.NBD_REP_ACK));
          break;
        case P.NBD_OPT_LIST_META_CONTEXT:
        case P.NBD_OPT_SET_META_CONTEXT: {
          const list = option === P.NBD_OPT_LIST_META_CONTEXT;
          if (!list) meta = null; // replaced even when this request fails
          if (!structured) throw invalid('negotiate structured replies first');
          const { name, queries } = parseMetaRequest(data);
          findExport(env, name);
          const contexts = matchContexts(queries, list);
          for (const c of contexts) {
            const body = Buffer.alloc(4 + Buffer.byteLength(c));
            setBe32(body, 0, list ? 0 : contextId(c));
            body.write(c, 4, 'utf8');
            send(P.optionReply(option, P.NBD_REP_META_CONTEXT, body));
          }
          if (!list) meta = { exportName: name, contexts };
          send(P.optionReply(option, P.NBD_REP_ACK));
          break;
        }
        default:
          throw new OptionError(P.NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
      }
    } catch (err) {
      if (!(err instanceof OptionError)) throw err;
      send(P.optionReply(option, err.type, Buffer.from(err.message, 'utf8')));
    }
  }
}

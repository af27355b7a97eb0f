/**
 * The client side of fixed newstyle negotiation: structured replies, the base:allocation
 * context, then NBD_OPT_GO with a block-size request (NBD_OPT_EXPORT_NAME for servers
 * without NBD_OPT_GO). Every server reply is checked before it sizes anything. An nbds URI
 * first upgrades the connection with NBD_OPT_STARTTLS and never falls back to plaintext.
 */
import * as net from 'node:net';
import { ImageError } from '../block/errors';
import { be16, be32, be64, be64n, setBe16, setBe32 } from '../io/bytes';
import * as P from './protocol';
import { clientTlsOptions, startTls } from './client-tls';
import { ByteReader } from './reader';
import { tlsReason } from './tls';
import { NbdAddress } from './uri';

/** Option replies beyond this are a broken or hostile server. */
const MAX_OPTION_REPLY = 64 * 1024;
const EXPORT_NAME_PADDING = 124;

export interface ClientSession {
  socket: net.Socket;
  reader: ByteReader;
  size: number;
  flags: number;
  structured: boolean;
  /** Id of base:allocation, when the server selected it. */
  allocationContext?: number;
  minimumBlock: number;
  preferredBlock: number;
  maxPayload: number;
}

function connect(addr: NbdAddress, what: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = 'socket' in addr ? net.createConnection(addr.socket) : net.createConnection(addr.port, addr.host);
    socket.once('connect', () => {
      socket.off('error', fail);
      socket.setNoDelay(true);
      resolve(socket);
    });
    const fail = (err: Error) => reject(new ImageError(err.message.includes('ENOENT') ? 'NOT_FOUND' : 'IO', `cannot connect: ${err.message}`, { file: what, cause: err }));
    socket.once('error', fail);
  });
}

export async function clientHandshake(addr: NbdAddress, uri: string): Promise<ClientSession> {
  const tlsOptions = addr.tls && (await clientTlsOptions(addr.tls));
  let socket = await connect(addr, uri);
  socket.on('error', () => undefined); // surfaced through the reader
  let reader = new ByteReader(socket);
  const fail = (message: string, code: 'IO' | 'NOT_FOUND' | 'UNSUPPORTED' = 'IO'): never => {
    socket.destroy();
    throw new ImageError(code, message, { file: uri });
  };
  try {
    const hello = await reader.read(18);
    if (be64n(hello, 0) !== P.NBDMAGIC || be64n(hello, 8) !== P.IHAVEOPT) fail('not an NBD server speaking newstyle negotiation');
    const serverFlags = be16(hello, 16);
    if (!(serverFlags & P.NBD_FLAG_FIXED_NEWSTYLE)) fail('the server does not support fixed newstyle negotiation', 'UNSUPPORTED');
    const noZeroes = (serverFlags & P.NBD_FLAG_NO_ZEROES) !== 0;
    const clientFlags = Buffer.alloc(4);
    setBe32(clientFlags, 0, P.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.NBD_FLAG_C_NO_ZEROES : 0));
    socket.write(clientFlags);

    /** Sends an option and collects its replies up to the final one. */
    const option = async (opt: number, data?: Uint8Array): Promise<{ final: number; message: string; replies: { type: number; data: Buffer }[] }> => {
      socket.write(P.optionRequest(opt, data));
      const replies: { type: number; data: Buffer }[] = [];
      for (;;) {
        const h = await reader.read(P.OPTION_REPLY_HEADER_SIZE);
        const length = be32(h, 16);
        if (be64n(h, 0) !== P.REPLY_MAGIC || be32(h, 8) !== opt || length > MAX_OPTION_REPLY) fail(`malformed reply to option ${opt}`);
        const type = be32(h, 12);
        const body = await reader.read(length);
        if (type === P.NBD_REP_ACK || type >= P.NBD_REP_FLAG_ERROR) return { final: type, message: body.toString('utf8'), replies };
        replies.push({ type, data: body });
      }
    };

    if (tlsOptions) {
      const r = await option(P.NBD_OPT_STARTTLS);
      if (r.final !== P.NBD_REP_ACK) fail(`the server does not support TLS (NBD_OPT_STARTTLS refused${r.message ? `: ${r.message}` : ''})`, 'UNSUPPORTED');
      if (reader.detach() !== 0) fail('the server sent data after accepting NBD_OPT_STARTTLS');
      socket = await startTls(socket, tlsOptions);
      reader = new ByteReader(socket);
    }
    const session: ClientSession = { socket, reader, size: 0, flags: 0, structured: false, minimumBlock: 1, preferredBlock: 4096, maxPayload: P.MAX_PAYLOAD };
    session.structured = (await option(P.NBD_OPT_STRUCTURED_REPLY)).final === P.NBD_REP_ACK;
    const name = Buffer.from(addr.name, 'utf8');
    if (session.structured) {
      const q = Buffer.concat([P.lengthPrefixed(addr.name), Buffer.from([0, 0, 0, 1]), P.lengthPrefixed(P.CONTEXT_BASE_ALLOCATION)]);
      const r = await option(P.NBD_OPT_SET_META_CONTEXT, q);
      for (const rep of r.replies) {
        if (r.final === P.NBD_REP_ACK && rep.type === P.NBD_REP_META_CONTEXT && rep.data.toString('utf8', 4) === P.CONTEXT_BASE_ALLOCATION) {
          session.allocationContext = be32(rep.data, 0);
        }
      }
    }
    const go = Buffer.alloc(4 + name.byteLength + 4);
    setBe32(go, 0, name.byteLength);
    go.set(name, 4);
    setBe16(go, 4 + name.byteLength, 1);
    setBe16(go, 6 + name.byteLength, P.NBD_INFO_BLOCK_SIZE);
    const r = await option(P.NBD_OPT_GO, go);
    if (r.final === P.NBD_REP_ERR_UNSUP) {
      socket.write(P.optionRequest(P.NBD_OPT_EXPORT_NAME, name));
      const reply = await reader.read(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING));
      session.size = be64(reply, 0);
      session.flags = be16(reply, 8);
      return session;
    }
    if (r.final === P.NBD_REP_ERR_UNKNOWN) fail(`the server has no export named '${addr.name}'${r.message ? `: ${r.message}` : ''}`, 'NOT_FOUND');
    if (r.final === P.NBD_REP_ERR_TLS_REQD) fail('the server requires TLS: use an nbds:// or nbds+unix:// URI', 'UNSUPPORTED');
    if (r.final !== P.NBD_REP_ACK) fail(`the server refused the export (reply 0x${r.final.toString(16)})${r.message ? `: ${r.message}` : ''}`);
    for (const rep of r.replies) {
      if (rep.type !== P.NBD_REP_INFO || rep.data.byteLength < 2) continue;
      const info = be16(rep.data, 0);
      if (info === P.NBD_INFO_EXPORT && rep.data.byteLength === 12) {
        session.size = be64(rep.data, 2);
        session.flags = be16(rep.data, 10);
      } else if (info === P.NBD_INFO_BLOCK_SIZE && rep.data.byteLength === 14) {
        session.minimumBlock = be32(rep.data, 2);
        session.preferredBlock = be32(rep.data, 6);
        session.maxPayload = Math.min(be32(rep.data, 10), P.MAX_PAYLOAD);
      }
    }
    const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
    if (!pow2(session.minimumBlock) || session.minimumBlock > 65536 || !pow2(session.preferredBlock) || session.maxPayload < session.preferredBlock) {
      fail(`the server's block sizes ${session.minimumBlock}/${session.preferredBlock}/${session.maxPayload} are invalid`);
    }
    return session;
  } catch (err) {
    socket.destroy();
    // TLS 1.3: a server that wants our certificate says so only after the handshake, on the first read.
    const alert = err instanceof ImageError && (err.cause as NodeJS.ErrnoException | undefined)?.code;
    if (alert === 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED') {
      throw new ImageError('IO', 'the server requires a client certificate: client-cert.pem and client-key.pem in the tls-certificates directory', { file: uri, cause: err });
    }
    if (tlsOptions && err instanceof ImageError && err.cause instanceof Error && /SSL routines/.test(err.cause.message)) {
      throw new ImageError('IO', `TLS error: ${tlsReason(err.cause)}`, { file: uri, cause: err });
    }
    throw err instanceof ImageError && !err.file ? new ImageError(err.code, err.message, { file: uri, cause: err }) : err;
  }
}

/**
 * The NBD server: listens on a TCP port or a unix socket, runs the handshake then the
 * transmission phase of each connection, caps the number of connections, and shuts down
 * cleanly (stop accepting, answer what is in flight, flush every export).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { ImageError } from '../block/errors';
import { Connection } from './connection';
import { NbdExport } from './export';
import { serverHandshake } from './handshake';
import { ByteReader } from './reader';
import { TlsConfig } from './tls';

/** A client must finish option haggling within this time (as qemu-nbd's handshake limit). */
const HANDSHAKE_TIMEOUT_MS = 10_000;
/** On shutdown, requests in flight get this long to finish (a client that stops reading cannot hold the server). */
const DRAIN_TIMEOUT_MS = 30_000;

export interface ServerOptions {
  exports: NbdExport[];
  tls?: TlsConfig;
  /** Most connections at once; 0 for no limit. */
  maxConnections: number;
  /** Keep serving after the last client left (otherwise `finished` resolves then). */
  persistent: boolean;
}

export type ListenAddress = { socket: string } | { port: number; host: string };

export class NbdServer {
  // Half-open: a client may shut its side down right after NBD_CMD_DISC, and the replies still
  // queued (some in a SpliceSink, where Node cannot see them) must go out before ours ends.
  private readonly server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
  private readonly sockets = new Set<net.Socket>();
  private readonly connections = new Set<Connection>();
  private stopping = false;
  private served = false;
  private socketPath?: string;
  private resolveFinished!: () => void;
  /** Resolves when a non-persistent server's last client has gone. */
  readonly finished = new Promise<void>((r) => (this.resolveFinished = r));

  constructor(private readonly opts: ServerOptions) {
    if (opts.exports.length === 0) throw new ImageError('INVALID_ARGUMENT', 'nothing to serve');
  }

  /** Starts listening; resolves with the address as a URI host part or socket path. */
  listen(addr: ListenAddress): Promise<ListenAddress> {
    if ('socket' in addr) {
      try {
        if (fs.statSync(addr.socket).isSocket()) fs.unlinkSync(addr.socket); // a stale socket of an earlier server
      } catch {
        // not there: nothing to remove
      }
      this.socketPath = addr.socket;
    }
    return new Promise((resolve, reject) => {
      this.server.once('error', (err) =>
        reject(new ImageError('IO', `cannot listen on ${'socket' in addr ? addr.socket : `${addr.host}:${addr.port}`}: ${err.message}`, { cause: err })),
      );
      const done = () => {
        const a = this.server.address();
        resolve(typeof a === 'object' && a ? { port: a.port, host: a.address } : addr);
      };
      if ('socket' in addr) this.server.listen(addr.socket, done);
      else this.server.listen(addr.port, addr.host, done);
    });
  }

  /** Stops accepting, lets requests in flight finish (new ones get NBD_ESHUTDOWN), flushes, disconnects. */
  async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.server.close();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([...this.connections].map((c) => c.shutdown())),
      new Promise((r) => (timer = setTimeout(r, DRAIN_TIMEOUT_MS))),
    ]);
    clearTimeout(timer);
    await Promise.all(this.opts.exports.filter((e) => !e.readOnly).map((e) => e.device.flush()));
    for (const s of this.sockets) s.destroy();
    for (const c of this.connections) c.close();
    if (this.socketPath) fs.rmSync(this.socketPath, { force: true });
    this.resolveFinished();
  }

  private accept(accepted: net.Socket): void {
    const max = this.opts.maxConnections;
    if (this.stopping || (max > 0 && this.sockets.size >= max)) {
      accepted.destroy();
      return;
    }
    const reader = ByteReader.adopt(accepted);
    const socket = reader.stream as net.Socket;
    socket.on('error', () => undefined); // a reset peer ends its session, nothing more
    this.sockets.add(socket);
    this.served = true;
    socket.setNoDelay(true);
    socket.setTimeout(HANDSHAKE_TIMEOUT_MS, () => socket.destroy());
    void this.session(reader).finally(() => {
      socket.destroy();
      this.sockets.delete(socket);
      if (!this.opts.persistent && this.served && this.sockets.size === 0) this.resolveFinished();
    });
  }

  private async session(reader: ByteReader): Promise<void> {
    const socket = reader.stream as net.Socket;
    try {
      const negotiated = await serverHandshake(reader, {
        exports: this.opts.exports,
        tls: this.opts.tls,
        shuttingDown: () => this.stopping,
      });
      if (!negotiated) return;
      socket.setTimeout(0);
      const conn = new Connection(negotiated);
      this.connections.add(conn);
      try {
        await conn.run();
      } finally {
        this.connections.delete(conn);
      }
    } catch (err) {
      if (!(err instanceof ImageError)) throw err; // the peer went away mid-handshake
    }
  }
}

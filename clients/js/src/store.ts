// Where a session's unacknowledged events wait across page reloads.
//
// The browser store keeps one snapshot per session: the JSON text of every
// event not yet acknowledged, with the time it was taken. IndexedDB holds it
// while the page lives (large, asynchronous). When the page is hidden or
// unloaded, the snapshot is written to localStorage as well, synchronously,
// because an IndexedDB transaction started while a page unloads may never
// commit. Loading takes the newer of the two snapshots. Without IndexedDB
// (some private modes, blocked storage) localStorage alone is used. A
// snapshot may hold events that were acknowledged after it was taken: they
// are sent again and the server's de-duplication by id ignores them.

/** Persistence of a session's unacknowledged events (JSON texts, in order). */
export interface Store {
  /** The events saved under `key`, oldest first; `[]` when there are none. */
  load(key: string): Promise<string[]>;
  /**
   * Replaces what is saved under `key` (`[]` removes it). With `urgent` the
   * page is going away: write synchronously what can be written so.
   */
  save(key: string, events: string[], urgent?: boolean): Promise<void>;
}

interface Snapshot {
  t: number;
  e: string[];
}

const PREFIX = "sessionfold:";

function localStore(): Storage | undefined {
  try {
    return globalThis.localStorage;
  } catch {
    return undefined; // access itself throws when storage is blocked
  }
}

function openDatabase(): Promise<IDBDatabase | undefined> {
  return new Promise((done) => {
    try {
      const request = indexedDB.open("sessionfold", 1);
      request.onupgradeneeded = () => request.result.createObjectStore("pending");
      request.onsuccess = () => done(request.result);
      request.onerror = request.onblocked = () => done(undefined);
    } catch {
      done(undefined);
    }
  });
}

/** IndexedDB with localStorage beside it; undefined where neither exists. */
export function browserStore(): Store | undefined {
  const local = localStore();
  const hasDb = typeof indexedDB != "undefined";
  if (!hasDb && !local) return;
  const database = hasDb ? openDatabase() : Promise.resolve(undefined);
  // Snapshot times only grow, so the newer of two snapshots is always known.
  let last = 0;
  // Per key, the time of the snapshot last written to localStorage.
  const localTimes = new Map<string, number>();

  const transact = <T>(db: IDBDatabase, use: (store: IDBObjectStore) => IDBRequest<any>) =>
    new Promise<T>((done, fail) => {
      const transaction = db.transaction("pending", "readwrite");
      const request = use(transaction.objectStore("pending"));
      transaction.oncomplete = () => done(request.result);
      transaction.onerror = transaction.onabort = () => fail(transaction.error);
    });

  const writeLocal = (key: string, snapshot: Snapshot) => {
    try {
      localTimes.set(key, snapshot.t);
      if (snapshot.e.length) local?.setItem(PREFIX + key, JSON.stringify(snapshot));
      else local?.removeItem(PREFIX + key);
    } catch {
      // Over quota: IndexedDB still has the last snapshot it took.
    }
  };

  return {
    async load(key) {
      let fromLocal: Snapshot | undefined;
      try {
        fromLocal = JSON.parse(local?.getItem(PREFIX + key) ?? "null") ?? undefined;
      } catch {
        // unreadable: ignore it
      }
      const db = await database;
      const fromDb = db && (await transact<Snapshot | undefined>(db, (s) => s.get(key)).catch(() => undefined));
      if (fromLocal) localTimes.set(key, fromLocal.t);
      const newest = !fromDb || (fromLocal && fromLocal.t >= fromDb.t) ? fromLocal : fromDb;
      last = Math.max(last, newest?.t ?? 0);
      return newest?.e ?? [];
    },
    save(key, events, urgent) {
      const snapshot = { t: (last = Math.max(Date.now(), last + 1)), e: events };
      // Before any await: on pagehide only synchronous work is sure to happen.
      if (urgent || !hasDb) writeLocal(key, snapshot);
      return database
        .then(async (db) => {
          if (!db) {
            if (hasDb) writeLocal(key, snapshot); // IndexedDB exists but would not open
            return;
          }
          await transact<unknown>(db, (s) => (events.length ? s.put(snapshot, key) : s.delete(key)));
          // The copy in localStorage is older than what IndexedDB now holds.
          if ((localTimes.get(key) ?? Infinity) < snapshot.t) {
            localTimes.delete(key);
            local?.removeItem(PREFIX + key);
          }
        })
        .catch(() => writeLocal(key, snapshot));
    },
  };
}

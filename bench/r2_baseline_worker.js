// The least any Worker must do to copy a file into R2 under Miniflare: fetch, then put the body
// with its declared length. The R2 benchmark runs it beside the real Worker, in the same run, so
// the simulator's own speed and memory are separated from what the real Worker adds.
export default {
  async fetch(request, env) {
    if (request.method !== "POST") return new Response("ok");
    const job = await request.json();
    const source = await fetch(job.source_url);
    const length = Number(source.headers.get("Content-Length"));
    const { readable, writable } = new FixedLengthStream(length);
    const [stored] = await Promise.all([
      env.BUCKET.put(`baseline/${job.email_id}`, readable),
      source.body.pipeTo(writable),
    ]);
    return Response.json({ success: true, key: stored.key, size: stored.size });
  },
};

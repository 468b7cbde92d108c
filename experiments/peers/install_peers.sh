#!/usr/bin/env bash
# Fetch and install the peer simulators of experiments/bench_peers.py, each in its own folder and
# virtual environment under PEERS_DIR (default /work/peers), outside this repository.
#
#   bash experiments/peers/install_peers.sh [PEERS_DIR]
#   MIRROR=/work/.mirror bash experiments/peers/install_peers.sh    # from bare git mirrors
#
# Without MIRROR each peer is cloned from GitHub at the commit the table was measured on; with
# MIRROR, read from MIRROR/<owner>+<name>/repo (a bare, possibly partial, git directory: files
# whose objects are absent, such as Git LFS data, are skipped and listed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=${1:-/work/peers}
python=${PYTHON:-python3}
mkdir -p "$peers"

fetch() {  # fetch OWNER/NAME COMMIT FOLDER
  local repo=$1 commit=$2 dest=$peers/$3
  if [ -e "$dest/.fetched" ]; then return; fi
  rm -rf "$dest" && mkdir -p "$dest"
  if [ -n "${MIRROR:-}" ]; then
    local gd=$MIRROR/${repo/\//+}/repo
    git --git-dir="$gd" ls-tree -r "$commit" | while read -r _ type sha path; do
      [ "$type" = blob ] || continue
      mkdir -p "$dest/$(dirname "$path")"
      git --git-dir="$gd" cat-file blob "$sha" >"$dest/$path" 2>/dev/null ||
        { rm -f "$dest/$path"; echo "$repo: absent in the mirror: $path"; }
    done
  else
    git clone -q "https://github.com/$repo" "$dest" && git -C "$dest" checkout -q "$commit"
  fi
  touch "$dest/.fetched"
}

venv() {  # venv FOLDER PACKAGES...
  local dest=$peers/$1; shift
  [ -x "$dest/.venv/bin/python" ] || "$python" -m venv "$dest/.venv"
  if [ $# -gt 0 ]; then "$dest/.venv/bin/pip" install -q "$@"; fi
}

fetch Luoxiaogan/vllm_simulation 00e1852691c6a957462f8dbe4f8387e9ac23ebec vllm_simulation
venv vllm_simulation                        # its simulation core needs the standard library only

fetch LLMServe/DistServe 82831f1604cc6b10bebd360f6c437a07790dde9f distserve
venv distserve simpy pandas numpy tqdm      # what simdistserve's simulate_dist imports

fetch microsoft/vidur 7d47513363ec447a741ac5e47241580b47724fbf vidur
venv vidur -r "$peers/vidur/requirements.txt"
attention=data/profiling/compute/a100/meta-llama/Llama-2-7b-hf/attention.csv
if [ ! -s "$peers/vidur/$attention" ] || head -c 40 "$peers/vidur/$attention" | grep -q git-lfs; then
  "$peers/vidur/.venv/bin/python" "$here/vidur_attention_profile.py" --out "$peers/vidur/$attention"
fi
echo "peers installed under $peers"

"""Ingest documents with embedkit, then retrieve them inside a LangChain chain.

    python examples/langchain_rag.py "how do I reset my password" [--docs examples/docs] [--qdrant-path DIR]

The chain is retriever -> context -> prompt. It stops at the prompt so the example runs offline with no
LLM; put your chat model after `prompt` (`... | prompt | ChatOpenAI(...)`) to get answers.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

import embedkit
from embedkit.ingestion import ingest, load_directory
from embedkit.sinks import QdrantSink
from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRetriever

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer from the context only. Cite sources as [doc_id].\n\nContext:\n{context}"),
        ("human", "{question}"),
    ]
)


def format_context(docs: list[Document]) -> str:
    # embedkit's own fields live under one reserved key, apart from the documents' metadata
    return "\n\n".join(f"[{doc.metadata['embedkit']['doc_id']}] {doc.page_content}" for doc in docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--docs", default=str(Path(__file__).parent / "docs"))
    parser.add_argument("--qdrant-path", default=None, help="embedded Qdrant store (default: a temporary one)")
    parser.add_argument("-k", type=int, default=3)
    args = parser.parse_args()

    path = args.qdrant_path or tempfile.mkdtemp(prefix="embedkit-rag-")
    embedder = embedkit.load()  # the default model; embedkit.TEIClient(url) works the same
    sink = QdrantSink("rag", path=path)
    report = ingest(load_directory(args.docs), embedder, sink, progress=False)  # re-running embeds nothing
    print(report.summary())

    retriever = EmbedkitRetriever(
        collection="rag", path=path, embeddings=EmbedkitEmbeddings(embedder=embedder), k=args.k
    )
    chain = {"context": retriever | RunnableLambda(format_context), "question": RunnablePassthrough()} | PROMPT
    try:
        prompt = chain.invoke(args.question)
    finally:
        sink.close()  # the embedded store is one client per path, shared with the retriever
    for message in prompt.to_messages():
        print(f"--- {message.type}\n{message.content}")


if __name__ == "__main__":
    main()
